"""`make profile-serving`: where a scoring request's time goes, phase by phase, at batch 1
and batch 1,000.

In one process on one core, with a real model (trained on the bundled sample as the
benchmark trains it) and real request bodies (the sample's pull requests, the fields the
model reads): each phase is what the `/v1/score` route does, timed alone over many
repetitions (the median CPU time, per request: the time other jobs on the machine take
the core does not count). Then the whole request through the ASGI app on uvloop, with no
socket: what it costs above the phases' sum is the framework's (routing, middleware, the
micro-batcher's hand-off through the event loop). What the socket and HTTP parsing add is
the benchmark's server CPU per request less that whole.

The typed decode (JSON decode and validation in one pass) is the floor any server of this
API pays; the same parser's untyped decode is printed beside it for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# one core, as the server runs (its CLI sets these before numpy loads)
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

from bench_serving import ours_bodies, sample_records, train_scorer  # noqa: E402

SIZES = (1, 1000)
ROUNDS = 5  # of each phase, interleaved: a busy moment spoils one round, not one phase
SECONDS_PER_ROUND = 0.25
TYPED = "JSON decode and validation (typed, one pass: the floor)"
UNTYPED = "(for reference, not in the sum) the same parser, untyped"
FRAMEWORK = "framework and hand-offs (the whole less the phases)"
WHOLE = "whole request (ASGI app, no socket)"


def median_seconds(work: Callable[[], Any], calls: int = 1, rounds: int = ROUNDS) -> float:
    """The median CPU time of one call, ``work`` making ``calls`` of them: the median of
    ``rounds`` rounds' medians. This process's CPU time, not the clock's: the time other
    jobs on the machine take the core does not count."""
    work()  # warm
    medians = []
    for _ in range(rounds):
        times: list[float] = []
        stop = time.process_time() + SECONDS_PER_ROUND
        while (start := time.process_time()) < stop or len(times) < 5:
            work()
            times.append((time.process_time() - start) / calls)
        medians.append(statistics.median(times))
    return statistics.median(medians)


def asgi_request(path: str, body: bytes, state: dict[str, Any]):
    """The ASGI scope and receive of a POST with ``body``, delivered in one message, as
    uvicorn hands over a body that has arrived by the time the app asks for it (on a loaded
    server, nearly every one; its reading from the socket is not in this profile)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": dict(state),
    }
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    return scope, receive


def run_async(
    loop: asyncio.AbstractEventLoop, make: Callable[[], Any], calls: int
) -> Callable[[], Any]:
    """``calls`` awaits of ``make()`` one after the other in the running loop (entering the
    loop once costs more than a small request)."""

    async def sequence() -> None:
        for _ in range(calls):
            await make()

    return lambda: loop.run_until_complete(sequence())


def profile(scorer) -> dict[int, list[tuple[str, float]]]:
    """Each phase's median seconds per request, per batch size."""
    import uvloop

    from model_serving.app import create_app
    from model_serving.model_source import LoadedModel
    from model_serving.settings import ServingSettings

    records = sample_records()
    model = LoadedModel("bench", "1", "models:/bench@bench", scorer)
    settings = ServingSettings(max_batch=1000)
    app = create_app(lambda: model, settings, load_before_serving=True)
    loop = uvloop.new_event_loop()  # the server's loop (uvicorn takes uvloop when installed)
    lifespan = app.router.lifespan_context(app)
    state = loop.run_until_complete(lifespan.__aenter__())
    try:
        return {
            size: phases(ours_bodies(records, size)[0].encode(), app, loop, state, model)
            for size in SIZES
        }
    finally:
        loop.run_until_complete(lifespan.__aexit__(None, None, None))
        loop.close()


def phases(body: bytes, app, loop, state: dict[str, Any], model) -> list[tuple[str, float]]:
    """The median seconds of each phase of one request with ``body``, in the route's order."""
    import msgspec
    import numpy as np
    from starlette.requests import Request

    from model_serving.app import read_body
    from model_serving.bodies import PullRequestFields, PullRequests, encode_verdicts
    from model_serving.metrics import ServingMetrics

    scorer = model.scorer
    metrics = ServingMetrics()
    metrics.watch_drift(scorer)
    calls = max(10, 100 * 1000 // len(body))  # requests per timed run of an async phase
    is_list = body.startswith(b"[")
    typed = msgspec.json.Decoder(list[PullRequestFields] if is_list else PullRequestFields)

    async def read() -> bytes:
        scope, receive = asgi_request("/v1/score", body, state)
        return await read_body(Request(scope, receive), len(body) + 1)

    def decode() -> list[PullRequestFields]:
        decoded = typed.decode(body)
        return decoded if is_list else [decoded]

    decoded = decode()

    def inputs() -> PullRequests:
        records = PullRequests.of(decoded)
        assert records.within_limits()
        return records

    records = inputs()
    feature_inputs = records.feature_inputs()
    features = scorer.features_of(feature_inputs, records.repositories, records.authors)

    def scores():
        errors = scorer.errors(features)
        return errors.mean(axis=1, dtype=np.float64) > scorer.threshold

    scored = scorer.scores(features)

    def count():
        metrics.observe_scores("pull_request", len(scored), int(scored.is_anomaly.sum()))
        labels = ("POST", "/v1/score", "200")
        metrics.requests.labels(*labels).inc()
        metrics.latency.labels(*labels).observe(0.001)

    async def whole():
        scope, receive = asgi_request("/v1/score", body, state)
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        assert sent[0]["status"] == 200, sent

    scoring = median_seconds(scores)
    return [
        (
            "body read (ASGI receive)",
            median_seconds(run_async(loop, read, calls), calls),
        ),
        (TYPED, median_seconds(decode)),
        (UNTYPED, median_seconds(lambda: msgspec.json.decode(body))),
        ("feature inputs (records -> arrays, time checks)", median_seconds(inputs)),
        (
            "features (context, spec formulas)",
            median_seconds(
                lambda: scorer.features_of(feature_inputs, records.repositories, records.authors)
            ),
        ),
        ("scoring (forward pass, errors, scores)", scoring),
        ("top features", median_seconds(lambda: scorer.scores(features)) - scoring),
        (
            "drift window",
            median_seconds(lambda: metrics.observe_features(features, records.repositories)),
        ),
        (
            "response encoding (verdicts, JSON)",
            median_seconds(lambda: encode_verdicts(scored, model, records.numbers)),
        ),
        ("metrics", median_seconds(count)),
        (WHOLE, median_seconds(run_async(loop, whole, calls), calls)),
    ]


def rows(phases: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """The table's rows: the phases, then the framework's share (the whole request less
    the phases' sum) and the whole."""
    counted = [(name, seconds) for name, seconds in phases if name not in (UNTYPED, WHOLE)]
    whole = dict(phases)[WHOLE]
    framework = whole - sum(seconds for _, seconds in counted)
    return [*[p for p in phases if p[0] != WHOLE], (FRAMEWORK, framework), (WHOLE, whole)]


def report(results: dict[int, list[tuple[str, float]]]) -> None:
    print("\n| phase | batch 1, µs/request | batch 1,000, ms/request | µs/record |")
    print("|---|---|---|---|")
    for (name, one), (_, many) in zip(rows(results[1]), rows(results[1000]), strict=True):
        print(f"| {name} | {one * 1e6:.1f} | {many * 1e3:.2f} | {many * 1e3:.2f} |")
    print("(batch 1 in µs, batch 1,000 in ms: the last column is µs per record)")


def trained_scorer(workdir: Path):
    """The benchmark's scorer, trained in a child process: this one's heap then holds what
    a server's does (no torch, pandas or MLflow), which the garbage collector's passes see."""
    from pipeline_contracts.scorer import AnomalyScorer

    path = workdir / "scorer.npz"
    subprocess.run([sys.executable, __file__, "--train-to", str(path)], check=True)
    return AnomalyScorer.load(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scorer", type=Path, help="a saved scorer.npz (default: train one)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--train-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_to:
        train_scorer(sample_records()).save(args.train_to)
        return 0
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if args.scorer:
        from pipeline_contracts.scorer import AnomalyScorer

        scorer = AnomalyScorer.load(args.scorer)
    else:
        load = os.getloadavg()
        print(f"load average {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores; training")
        with tempfile.TemporaryDirectory(prefix="profile-serving-") as workdir:
            scorer = trained_scorer(Path(workdir))
    results = profile(scorer)
    if args.json:
        json.dump({size: rows(phases) for size, phases in results.items()}, sys.stdout)
    else:
        report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
