"""Load tests of the scoring API: the Locust file and its packaged sample, which the quality
gate scores too."""

from __future__ import annotations

import gzip
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

# 300 real pull requests of the bundled sample (both repositories, spread over their history)
PACKAGED_SAMPLE = Path(str(files(__name__).joinpath("sample_prs.jsonl.gz")))


def read_pull_requests(path: Path) -> list[dict[str, Any]]:
    """The GitHub-shaped pull requests of a ``.jsonl.gz`` file."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]
