"""Locust users that score real pull requests, one at a time and in batches.

The records are a 300-record slice of the bundled sample (`data/samples`, both
repositories, spread over their history), packaged with model_serving so the load-gate
image needs nothing else; ``LOAD_GATE_SAMPLE`` points at another ``.jsonl.gz`` of
GitHub-shaped pull requests.

Every response is checked: status 200 and one verdict per record sent. Each request's exact
latency (Locust's own percentiles are rounded) is written to ``LOAD_GATE_LATENCY_FILE``
when the run ends, for the gate to judge.

Knobs (environment, set by ``load-gate``): LOAD_GATE_BATCH_SIZE (records per batched
request, default 20), LOAD_GATE_BATCH_WEIGHT / LOAD_GATE_SINGLE_WEIGHT (task mix, default
1:9), LOAD_GATE_WAIT_SECONDS (pause between a user's requests, default 0.05).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from locust import FastHttpUser, constant, events, task

from model_serving.loadtest import PACKAGED_SAMPLE, read_pull_requests

SAMPLE = Path(os.environ.get("LOAD_GATE_SAMPLE") or PACKAGED_SAMPLE)
BATCH_SIZE = int(os.environ.get("LOAD_GATE_BATCH_SIZE", "20"))
WAIT_SECONDS = float(os.environ.get("LOAD_GATE_WAIT_SECONDS", "0.05"))
LATENCY_FILE = os.environ.get("LOAD_GATE_LATENCY_FILE")
MAX_SAMPLES = 2_000_000  # bounds memory on long runs (~50 MB)


RECORDS = read_pull_requests(SAMPLE)
# Encoded once: the generator's CPU goes into sending, not into json.dumps.
SINGLE_BODIES = [json.dumps(record).encode() for record in RECORDS]
HEADERS = {"content-type": "application/json"}

_latencies: list[tuple[str, float, bool]] = []
_window: dict[str, float | None] = {"start": None, "stop": None}


@events.test_start.add_listener
def _started(**_kwargs) -> None:
    _window["start"] = time.time()


@events.request.add_listener
def _record(name, response_time, exception, **_kwargs) -> None:
    if len(_latencies) < MAX_SAMPLES:
        _latencies.append((name, float(response_time), exception is None))


@events.test_stop.add_listener
def _stopped(**_kwargs) -> None:
    _window["stop"] = time.time()


@events.quitting.add_listener
def _write_latencies(**_kwargs) -> None:
    if not LATENCY_FILE:
        return
    start, stop = _window["start"], _window["stop"] or time.time()
    Path(LATENCY_FILE).write_text(
        json.dumps(
            {
                "duration_seconds": (stop - start) if start else 0.0,
                "requests": _latencies,
                "truncated": len(_latencies) >= MAX_SAMPLES,
            }
        )
    )


class ScoringUser(FastHttpUser):
    wait_time = constant(WAIT_SECONDS)

    def _score(self, body: bytes, name: str, expected: int) -> None:
        # FastHttpSession sends bytes as they are (its docstring says so; its hint omits them).
        with self.client.post(
            "/v1/score",
            data=body,  # type: ignore[arg-type]
            headers=HEADERS,
            name=name,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                results = response.json()["results"]
            except (ValueError, KeyError, TypeError):
                response.failure("response is not {'results': [...]}")
                return
            if len(results) != expected:
                response.failure(f"{len(results)} verdicts for {expected} records")

    @task(int(os.environ.get("LOAD_GATE_SINGLE_WEIGHT", "9")))
    def score_one(self) -> None:
        self._score(random.choice(SINGLE_BODIES), "POST /v1/score [1]", 1)

    @task(int(os.environ.get("LOAD_GATE_BATCH_WEIGHT", "1")))
    def score_batch(self) -> None:
        batch = random.sample(RECORDS, min(BATCH_SIZE, len(RECORDS)))
        self._score(json.dumps(batch).encode(), f"POST /v1/score [{len(batch)}]", len(batch))
