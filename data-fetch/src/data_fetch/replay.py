"""The replay source: JSON Lines (optionally gzipped) of GitHub REST-shaped pull requests."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_replay_file(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed JSON or the undecodable line as a string)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError:
                yield line_number, line.rstrip("\n")
