"""Fixtures for the ml-pipeline tests: one Spark session (the sample records and the
feature data set writer are in ../conftest.py, shared with the ops tests)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]


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
