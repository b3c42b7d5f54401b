"""The bundled sample of real pull requests (``data/samples/``), for whoever needs a record."""

from __future__ import annotations

import gzip
import json
from typing import Any

from pipeline_ops.paths import SAMPLES_DIR


def first_sample_record() -> dict[str, Any]:
    """The first pull request of the first bundled sample, as GitHub's API gives it."""
    path = sorted(SAMPLES_DIR.glob("*.prs.jsonl.gz"))[0]
    with gzip.open(path, "rt") as lines:
        return dict(json.loads(next(lines)))


def newest_sample_records(per_file: int) -> list[dict[str, Any]]:
    """The newest ``per_file`` pull requests of each bundled sample (its files run oldest
    first): the traffic a model trained on the sample sees as ordinary."""
    records: list[dict[str, Any]] = []
    for path in sorted(SAMPLES_DIR.glob("*.prs.jsonl.gz")):
        with gzip.open(path, "rt") as lines:
            records += [json.loads(line) for line in lines][-per_file:]
    return records
