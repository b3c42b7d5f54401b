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
