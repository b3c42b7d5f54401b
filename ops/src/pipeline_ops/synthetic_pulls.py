"""Synthetic pull requests drawn from the bundled sample's distributions, as many as a cost
curve needs (``make bench-scale``), seeded: the same seed and size give the same rows.

How a row is drawn: repositories get about ``pulls_per_repository`` pull requests each (the
size drawn uniformly within half of it either way). Every pull request is a real one of the
sample drawn at random (the sample's joint distribution of sizes, author, title, body and
time to merge, so their correlations stay), then varied: additions and deletions scaled by
a log-normal factor (sigma 0.25), created up to a day earlier, merged after the drawn pull
request's own time to merge. Numbers follow the creation order within each repository. The
title and any non-empty body end with the pull request's number (``(#N)``, as GitHub ends a
squash merge's subject; it replaces the text's last characters where the text is long
enough, so lengths keep their distribution): texts are distinct objects in memory, as real
ones are, not thousands of references to a few. Times stay within the sample's range, so
never in the future.

Rows come as the pull-request input columns of ``pipeline_contracts.pull_requests`` (the
types of :func:`sample_frame`), or as GitHub REST-shaped payloads (:func:`rest_payloads`)
for the replay server and data-fetch.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_common.limits import MAX_COUNT
from pipeline_contracts.pull_requests import COUNT_COLUMNS, PULL_REQUEST_COLUMNS
from pipeline_ops.paths import SAMPLES_DIR

COLUMNS = tuple(column.name for column in PULL_REQUEST_COLUMNS)
REPOSITORY_OWNER = "synthetic"
# Repositories generated at once: bounds the generator's memory whatever the size asked.
CHUNK_REPOSITORIES = 200
_SIZE_JITTER = 0.25  # sigma of the log-normal factor on additions and deletions
_CREATED_JITTER_SECONDS = 86_400  # created up to a day earlier, in whole seconds


def sample_frame(samples_dir: Path = SAMPLES_DIR) -> pd.DataFrame:
    """The bundled pull requests as the input columns, typed as every stage reads them:
    texts as ``object``, counts ``int64``, times ``datetime64[ns, UTC]``."""
    payloads: list[dict[str, Any]] = []
    for path in sorted(samples_dir.glob("*.prs.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            payloads.extend(json.loads(line) for line in lines if line.strip())
    if not payloads:
        raise FileNotFoundError(f"no *.prs.jsonl.gz sample under {samples_dir}")
    frame = pd.DataFrame(
        {
            "repository": [p["base"]["repo"]["full_name"] for p in payloads],
            "number": [p["number"] for p in payloads],
            "author": [(p.get("user") or {}).get("login") for p in payloads],
            "title": [p.get("title") or "" for p in payloads],
            "body": [p.get("body") or "" for p in payloads],
            "created_at": [p["created_at"] for p in payloads],
            "merged_at": [p.get("merged_at") for p in payloads],
            **{c: [p[c] for p in payloads] for c in COUNT_COLUMNS if c != "number"},
        }
    )
    return _typed(frame)


def synthetic_pull_requests(
    rows: int,
    seed: int = 0,
    *,
    pulls_per_repository: int = 1000,
    sample: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """``rows`` synthetic pull requests, ordered by repository and number."""
    chunks = list(
        synthetic_chunks(rows, seed, pulls_per_repository=pulls_per_repository, sample=sample)
    )
    if not chunks:
        return _typed(pd.DataFrame({name: [] for name in COLUMNS}))
    return pd.concat(chunks, ignore_index=True)


def synthetic_chunks(
    rows: int,
    seed: int = 0,
    *,
    pulls_per_repository: int = 1000,
    sample: pd.DataFrame | None = None,
) -> Iterator[pd.DataFrame]:
    """The rows of :func:`synthetic_pull_requests`, :data:`CHUNK_REPOSITORIES` whole
    repositories at a time."""
    if rows < 0 or pulls_per_repository < 1:
        raise ValueError(
            f"rows ({rows}) must be >= 0 and pulls_per_repository ({pulls_per_repository}) >= 1"
        )
    source = sample_frame() if sample is None else sample
    sizes = _repository_sizes(rows, pulls_per_repository, np.random.default_rng([seed, 0]))
    for chunk, start in enumerate(range(0, len(sizes), CHUNK_REPOSITORIES)):
        rng = np.random.default_rng([seed, 1, chunk])
        yield _draw(
            source, sizes[start : start + CHUNK_REPOSITORIES], first_repository=start, rng=rng
        )


def write_parquet(path: Path, rows: int, seed: int = 0, *, pulls_per_repository: int = 1000) -> int:
    """Write :func:`synthetic_pull_requests` to one Parquet file (times in microseconds, as
    Spark reads them), chunk by chunk; returns the rows written."""
    sample = sample_frame()
    written = 0
    writer: pq.ParquetWriter | None = None
    try:
        for chunk in synthetic_chunks(
            rows, seed, pulls_per_repository=pulls_per_repository, sample=sample
        ):
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, coerce_timestamps="us")
            writer.write_table(table)
            written += len(chunk)
    finally:
        if writer is not None:
            writer.close()
    return written


def rest_payloads(frame: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """The rows as GitHub REST pull requests, shaped like the bundled sample (merged, so
    closed, updated and closed when merged)."""
    for row in frame.itertuples(index=False):
        created = _iso(row.created_at)
        merged = None if pd.isna(row.merged_at) else _iso(row.merged_at)
        yield {
            "number": int(row.number),
            "title": row.title,
            "body": row.body,
            "state": "closed" if merged else "open",
            "user": {"login": row.author},
            "created_at": created,
            "updated_at": merged or created,
            "closed_at": merged,
            "merged_at": merged,
            **{c: int(getattr(row, c)) for c in COUNT_COLUMNS if c != "number"},
            "labels": [],
            "base": {"repo": {"full_name": row.repository}},
        }


def _repository_sizes(rows: int, mean: int, rng: np.random.Generator) -> np.ndarray:
    low, high = max(1, mean - mean // 2), mean + mean // 2
    drawn = rng.integers(low, high + 1, size=rows // low + 1)
    ends = np.cumsum(drawn)
    count = int(np.searchsorted(ends, rows)) + 1 if rows else 0
    sizes = drawn[:count].copy()
    if count:
        sizes[-1] -= int(ends[count - 1]) - rows  # the last repository takes what is left
    return sizes


def _draw(
    sample: pd.DataFrame, sizes: np.ndarray, *, first_repository: int, rng: np.random.Generator
) -> pd.DataFrame:
    rows = int(sizes.sum())
    picked = rng.integers(0, len(sample), size=rows)
    drawn = sample.iloc[picked].reset_index(drop=True)
    repository_index = np.repeat(np.arange(len(sizes)) + first_repository, sizes)

    def scaled(column: str) -> np.ndarray:
        factor = np.exp(rng.normal(0.0, _SIZE_JITTER, size=rows))
        values = np.rint(drawn[column].to_numpy(np.float64) * factor)
        return np.clip(values, 0, MAX_COUNT).astype(np.int64)

    earlier = pd.to_timedelta(rng.integers(0, _CREATED_JITTER_SECONDS, rows), unit="s")
    created = drawn["created_at"] - earlier.to_numpy()
    merged = created + (drawn["merged_at"] - drawn["created_at"])
    # numbers follow creation order within each repository
    order = np.lexsort((created.to_numpy(), repository_index))
    position = np.empty(rows, dtype=np.int64)
    position[order] = np.arange(rows)
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    number = position - starts + 1
    tags = [f" (#{n})" for n in number]
    frame = pd.DataFrame(
        {
            "repository": [f"{REPOSITORY_OWNER}/repo-{i:06d}" for i in repository_index],
            "number": number,
            "author": drawn["author"].to_numpy(),
            "title": [_tagged(t, tag) for t, tag in zip(drawn["title"], tags, strict=True)],
            "body": [
                _tagged(b, tag) if b else b for b, tag in zip(drawn["body"], tags, strict=True)
            ],
            "created_at": created,
            "merged_at": merged,
            "additions": scaled("additions"),
            "deletions": scaled("deletions"),
            "changed_files": drawn["changed_files"].to_numpy(np.int64),
            "commits": drawn["commits"].to_numpy(np.int64),
        }
    )
    return _typed(frame.iloc[order].reset_index(drop=True))


def _tagged(text: str, tag: str) -> str:
    """``text`` ending with ``tag``, its length kept where it is long enough to spare it."""
    if len(text) >= 2 * len(tag):
        return text[: len(text) - len(tag)] + tag
    return text + tag


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.reindex(columns=list(COLUMNS))
    for column in PULL_REQUEST_COLUMNS:
        name = column.name
        if column.kind == "count":
            frame[name] = frame[name].astype(np.int64)
        elif column.kind == "time":
            frame[name] = pd.to_datetime(frame[name], utc=True).astype("datetime64[ns, UTC]")
        else:
            frame[name] = frame[name].astype(object)
    return frame


def _iso(moment: pd.Timestamp) -> str:
    return str(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))
