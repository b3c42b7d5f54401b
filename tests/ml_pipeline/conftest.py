"""Fixtures for the ml-pipeline tests: real sample records, one Spark session, and a
writer for feature data sets laid out exactly as spark-preprocess publishes them."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ml_pipeline.datasets import MANIFEST
from ml_pipeline.feature_frames import attach_context, compute_features, context_columns
from ml_pipeline.preprocess.job import publish_latest
from pipeline_common.storage import StorageLocation
from pipeline_contracts.features import CONTEXT_COLUMNS, FEATURE_NAMES, FEATURE_SPEC_VERSION

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def read_samples(samples_dir: Path) -> Callable[[int], list[dict[str, Any]]]:
    """The first ``per_file`` raw (GitHub REST-shaped) pull requests of each sample file."""

    def read(per_file: int) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for path in sorted(samples_dir.glob("*.prs.jsonl.gz")):
            with gzip.open(path, "rt", encoding="utf-8") as lines:
                for index, line in enumerate(lines):
                    if index >= per_file:
                        break
                    records.append(json.loads(line))
        return records

    return read


@pytest.fixture(scope="session")
def feature_rows() -> Callable[[list[dict[str, Any]]], pd.DataFrame]:
    return _feature_rows


def _feature_rows(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as spark-preprocess publishes them (keys, inputs, context, features), in pandas."""
    raw = pd.DataFrame(records)
    keys = pd.DataFrame(
        {
            "repository": [r["base"]["repo"]["full_name"] for r in records],
            "number": raw["number"].astype("int64"),
            "author": [r["user"]["login"] for r in records],
            "created_at": pd.to_datetime(raw["created_at"], utc=True),
        }
    )
    frame = pd.concat([raw.drop(columns=["user"]), keys[["repository", "author"]]], axis=1)
    # the context columns as of each pull request: the single-process reference of Spark's
    frame[list(CONTEXT_COLUMNS)] = context_columns(frame)
    context_frame = attach_context(frame, None)
    published = context_frame[
        ["additions", "deletions", "changed_files", "commits", *CONTEXT_COLUMNS]
    ]
    return pd.concat([keys, published, compute_features(context_frame)], axis=1)


@pytest.fixture(scope="session")
def write_feature_run() -> Callable[..., str]:
    """Publish ``frame`` under ``root/run_id`` (Parquet, then manifest, then LATEST)."""

    def write(
        root: Path,
        run_id: str,
        frame: pd.DataFrame,
        *,
        manifest: dict[str, Any] | None = None,
        with_manifest: bool = True,
        publish: bool = True,
    ) -> str:
        run_dir = root / run_id
        (run_dir / "features").mkdir(parents=True)
        frame.to_parquet(run_dir / "features" / "part-0.parquet", index=False)
        if with_manifest:
            document = {
                "run_id": run_id,
                "created_at": datetime.now(UTC).isoformat(),
                "feature_spec_version": FEATURE_SPEC_VERSION,
                "features": list(FEATURE_NAMES),
                "rows": len(frame),
                "data_path": "features",
                "source": "test",
                **(manifest or {}),
            }
            (run_dir / MANIFEST).write_text(json.dumps(document))
        if publish:
            publish_latest(StorageLocation.parse(str(root)), run_id)
        return run_id

    return write


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One local Spark session for the whole test session (startup costs ~15 s)."""
    from ml_pipeline.preprocess.settings import PreprocessSettings
    from ml_pipeline.preprocess.spark import build_spark_session

    for key, value in {
        "PYSPARK_PYTHON": str(PROJECT_ROOT / ".venv" / "bin" / "python"),
        "SPARK_LOCAL_IP": "127.0.0.1",
    }.items():
        os.environ.setdefault(key, value)
    session = build_spark_session(
        PreprocessSettings(
            master="local[2]", jars_dir=str(PROJECT_ROOT / ".tools" / "jars"), driver_memory="1g"
        ),
        app_name="ml-pipeline-tests",
    )
    try:
        yield session
    finally:
        session.stop()
