"""spark-preprocess against a real FerretDB and a local Spark: the published Parquet holds
one row per pull request, with exactly the features the scorer computes (no train/serve
skew), behind a manifest and LATEST."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pymongo
import pytest

from data_fetch.job import FetchJob
from data_fetch.settings import FetchSecret
from ml_pipeline.datasets import load_feature_dataset
from ml_pipeline.features import FEATURE_NAMES, FEATURE_SPEC_VERSION
from ml_pipeline.preprocess.job import PreprocessJob
from ml_pipeline.preprocess.settings import PreprocessSecret

PER_FILE = 15


@pytest.fixture(scope="module")
def mongo_database(platform, samples_dir: Path) -> Any:
    """A unique database holding 2 x 15 real sample pull requests, written by data-fetch."""
    uri = f"mongodb://127.0.0.1:{platform.service('mongo').port}/"
    database = f"t_preprocess_{uuid.uuid4().hex[:8]}"
    summary = FetchJob(
        FetchSecret(mongo_uri=uri, mongo_database=database),
        sorted(samples_dir.glob("*.prs.jsonl.gz")),
        limit_per_file=PER_FILE,
    ).run()
    assert summary["collection_count"] == 2 * PER_FILE
    yield uri, database
    with pymongo.MongoClient(uri) as client:
        client.drop_database(database)


@pytest.fixture(scope="module")
def published(spark, mongo_database, tmp_path_factory) -> dict[str, Any]:
    uri, database = mongo_database
    root = tmp_path_factory.mktemp("features")
    secret = PreprocessSecret(mongo_uri=uri, mongo_database=database, features_uri=str(root))
    first = PreprocessJob(spark, secret).run()
    second = PreprocessJob(spark, secret).run()
    return {"root": root, "first": first, "second": second}


def test_publishes_one_row_per_pull_request_with_manifest(published) -> None:
    root, first = published["root"], published["first"]
    assert first["rows"] == 2 * PER_FILE
    manifest = json.loads((root / first["run_id"] / "manifest.json").read_text())
    assert manifest["rows"] == 2 * PER_FILE
    assert manifest["feature_spec_version"] == FEATURE_SPEC_VERSION
    assert manifest["features"] == list(FEATURE_NAMES)
    assert list((root / first["run_id"] / "features").rglob("*.parquet"))


def test_latest_points_at_the_newest_run_and_old_runs_stay(published) -> None:
    root, first, second = published["root"], published["first"], published["second"]
    assert first["run_id"] != second["run_id"]
    assert (root / "LATEST").read_text().strip() == second["run_id"]
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # no temp files
    assert len(load_feature_dataset(str(root), first["run_id"]).frame) == 2 * PER_FILE


def test_spark_features_equal_the_scorers_features(published, read_samples, feature_rows) -> None:
    """The train/serve skew check: Spark (mapInPandas over MongoDB documents) and plain
    pandas over the raw GitHub-shaped records give the same numbers."""
    dataset = load_feature_dataset(str(published["root"]))
    assert dataset.run_id == published["second"]["run_id"]
    spark_rows = dataset.frame.assign(repository=lambda f: f["repository"].astype(str))
    spark_rows = spark_rows.sort_values(["repository", "number"]).reset_index(drop=True)
    expected = feature_rows(read_samples(PER_FILE))
    expected = expected.sort_values(["repository", "number"]).reset_index(drop=True)

    assert list(spark_rows["repository"]) == list(expected["repository"])
    assert list(spark_rows["number"]) == list(expected["number"])
    # timestamps survive MongoDB and Spark unshifted (the session runs in UTC)
    assert list(pd.to_datetime(spark_rows["created_at"], utc=True)) == list(expected["created_at"])
    np.testing.assert_allclose(
        spark_rows[list(FEATURE_NAMES)].to_numpy(),
        expected[list(FEATURE_NAMES)].to_numpy(),
        rtol=1e-12,
        atol=1e-12,
    )


def test_spark_parquet_round_trip(spark, tmp_path: Path) -> None:
    rows = [("pallets/flask", 1, 0.5), ("fastapi/fastapi", 2, -1.25)]
    frame = spark.createDataFrame(rows, "repository string, number long, value double")
    target = f"file://{tmp_path}/round-trip"
    frame.write.parquet(target)
    back = spark.read.parquet(target)
    assert sorted(tuple(r) for r in back.collect()) == sorted(rows)
