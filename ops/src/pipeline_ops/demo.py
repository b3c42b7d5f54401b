"""`make demo-anomaly`: score a few real and a few deliberately unusual pull requests against
the serving champion and show which are flagged and why."""

from __future__ import annotations

import copy
import gzip
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import requests

from pipeline_contracts.registry import ModelReference
from pipeline_ops.base.processes import StateFile
from pipeline_ops.paths import LOCAL_DIR, SAMPLES_DIR


def real_pull_requests(count: int = 3) -> list[dict[str, Any]]:
    path = SAMPLES_DIR / "pallets__flask.prs.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        records = [json.loads(line) for _, line in zip(range(400), lines, strict=False)]
    merged = [r for r in records if r.get("merged_at")]
    return merged[-count:]


def unusual_pull_requests(template: dict[str, Any]) -> list[dict[str, Any]]:
    """Real records changed the way suspicious pull requests look."""

    def variant(title: str, **changes: Any) -> dict[str, Any]:
        record = copy.deepcopy(template)
        record.update(title=title, number=900_000 + len(title), **changes)
        return record

    created = "2024-03-10T03:00:00Z"  # a Sunday, 03:00 UTC
    return [
        variant("Vendor everything", additions=60_000, deletions=0, changed_files=450, commits=1),
        variant("Remove old code", additions=0, deletions=35_000, changed_files=300, commits=1),
        variant(
            "Quick fix",
            additions=9_000,
            deletions=4_000,
            changed_files=120,
            commits=1,
            created_at=created,
            merged_at="2024-03-10T03:01:00Z",
            body="",
        ),
    ]


@contextmanager
def serving_url(env: Mapping[str, str], model: ModelReference, state: StateFile) -> Iterator[str]:
    """The URL `make run KEEP_SERVING=1` left running (in the platform's state record), or a
    temporary champion service, recorded there while the demo runs."""
    from pipeline_ops.promotion import kept_serving, start_serving, stop

    for kept in kept_serving(state):
        try:
            if requests.get(f"{kept.url}/readyz", timeout=2).status_code == 200:
                yield kept.url
                return
        except requests.RequestException:
            pass
    record = start_serving("demo", model, env, LOCAL_DIR / "pipeline" / "serving", state)
    try:
        yield record.url
    finally:
        stop(state, record)


def score_and_show(url: str) -> list[dict[str, Any]]:
    real = real_pull_requests()
    records = real + unusual_pull_requests(real[0])
    response = requests.post(f"{url}/v1/score", json=records, timeout=60)
    response.raise_for_status()
    body = response.json()
    rows = []
    print(f"model {body.get('model_name')} v{body.get('model_version')} at {url}")
    print(f"{'kind':8} {'PR':>7}  {'title':28} {'score':>8} {'flag':5} why")
    for index, (record, verdict) in enumerate(zip(records, body["results"], strict=True)):
        kind = "real" if index < len(real) else "unusual"
        flag = "YES" if verdict["is_anomaly"] else "no"
        why = ", ".join(verdict["top_features"]) if verdict["is_anomaly"] else ""
        print(
            f"{kind:8} {record['number']:>7}  {record['title'][:28]:28} "
            f"{verdict['score']:8.3f} {flag:5} {why}"
        )
        rows.append({"kind": kind, "number": record["number"], **verdict})
    print(f"threshold {body['results'][0]['threshold']:.3f} (score above it = flagged)")
    return rows
