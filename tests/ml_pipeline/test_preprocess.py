"""spark-preprocess against a real FerretDB, a local Spark and (for S3) a real SeaweedFS:
the published Parquet holds one row per valid pull request, with exactly the features the
scorer computes (no train/serve skew), behind a manifest and LATEST; bad records go to the
quarantine with their reason; a failed run publishes nothing; the same input gives the
same content hash."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pymongo
import pytest

from data_fetch.job import FetchJob
from data_fetch.settings import FetchSecret
from ml_pipeline.datasets import DatasetError, load_feature_dataset
from ml_pipeline.preprocess import job as job_module
from ml_pipeline.preprocess.job import PreprocessJob
from ml_pipeline.preprocess.mongo_source import FORMAT, PullRequestDataSource, plan_partitions
from ml_pipeline.preprocess.publish import new_run_id
from ml_pipeline.preprocess.settings import PreprocessJobSettings, PreprocessSecret
from pipeline_common.cli import StageError
from pipeline_contracts.features import FEATURE_NAMES, FEATURE_SPEC_VERSION

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


def test_manifest_describes_the_run(published) -> None:
    root, first = published["root"], published["first"]
    manifest = json.loads((root / first["run_id"] / "manifest.json").read_text())
    assert manifest["quarantined_rows"] == 0
    assert manifest["quarantine_reasons"] == {}
    assert [c["name"] for c in manifest["schema"]][:5] == [
        "repository",
        "number",
        "author",
        "created_at",
        "merged_at",
    ]
    assert manifest["input_snapshot"]["documents"] == 2 * PER_FILE
    assert manifest["input_snapshot"]["source"].endswith(".pull_requests")
    assert manifest["content_hash"].startswith("sha256:")
    assert sum(f["rows"] for f in manifest["files"]) == 2 * PER_FILE
    stats = manifest["statistics"]["log_additions"]
    frame = load_feature_dataset(str(root), first["run_id"]).frame
    assert stats["mean"] == pytest.approx(frame["log_additions"].mean(), rel=1e-12)
    assert stats["max"] == frame["log_additions"].max()


def test_same_input_gives_the_same_content_hash(published, spark, mongo_database, tmp_path):
    """Two runs, and a run with the other reader (the MongoDB connector, one partition)
    over the same documents, publish the same content."""
    assert published["first"]["content_hash"] == published["second"]["content_hash"]
    uri, database = mongo_database
    secret = PreprocessSecret(mongo_uri=uri, mongo_database=database, features_uri=str(tmp_path))
    by_connector = PreprocessJob(spark, secret, PreprocessJobSettings(reader="connector")).run()
    assert by_connector["content_hash"] == published["first"]["content_hash"]


def test_partitioned_reader_reads_every_document_once(spark, mongo_database) -> None:
    uri, database = mongo_database
    spark.dataSource.register(PullRequestDataSource)
    frame = (
        spark.read.format(FORMAT)
        .option("uri", uri)
        .option("database", database)
        .option("collection", "pull_requests")
        .option("partitions", "5")
        .load()
    )
    assert frame.rdd.getNumPartitions() >= 4
    ids = [row["_id"] for row in frame.select("_id").collect()]
    assert len(ids) == len(set(ids)) == 2 * PER_FILE


def test_partition_plan_splits_big_repositories_and_packs_small_ones() -> None:
    plan = plan_partitions({"o/big": 700, "o/s1": 100, "o/s2": 90, "o/s3": 80, None: 3}, 4)
    assert plan == [
        {"repository": "o/big", "number": {"$mod": [3, 0]}},
        {"repository": "o/big", "number": {"$mod": [3, 1]}},
        {"repository": "o/big", "number": {"$mod": [3, 2]}},
        {"repository": {"$in": ["o/s1", "o/s2", "o/s3"]}},
        {"repository": None},  # documents without a repository are read, then quarantined
    ]
    # many small repositories still make about the partitions asked for
    many = plan_partitions({f"o/r{i:02d}": 10 for i in range(40)}, 4)
    assert len(many) == 4
    assert sorted(r for f in many for r in f["repository"]["$in"]) == [
        f"o/r{i:02d}" for i in range(40)
    ]


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


def _doc(number: int, author: str, created: datetime, merged: datetime | None, **fields) -> dict:
    doc = {
        "_id": f"o/a#{number}",
        "repository": "o/a",
        "number": number,
        "author_login": author,
        "title": "Fix",
        "body": "",
        "created_at": created,
        "merged_at": merged,
        "additions": 1,
        "deletions": 0,
        "changed_files": 1,
        "commits": 1,
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not ...}


def _at(day: int, hour: int = 0, month: int = 1) -> datetime:
    return datetime(2024, month, day, hour, tzinfo=UTC)


HAND_MADE = [
    # valid: o/a changes are 10, 4, 4, 6
    _doc(1, "ann", _at(10, 10), _at(10, 12), additions=10),
    _doc(2, "bob", _at(5), None, additions=0, deletions=4),
    # opened before #1 although its number is higher: ann's first pull request
    _doc(3, "ann", _at(1), _at(6), additions=2, deletions=2),  # merged Saturday 00:00
    # the newer data-fetch field name
    {**_doc(4, "x", _at(1, month=2), None, additions=6), "author": "ann", "author_login": ...},
    # broken
    _doc(5, "ann", _at(2), None, commits=...),
    _doc(6, "bob", _at(3), None, additions=-3),
    _doc(7, "bob", _at(4, 12), _at(4, 11)),
    _doc(8, "ann", _at(5), datetime(2300, 1, 1, tzinfo=UTC), additions="many"),
]
HAND_MADE_REASONS = {
    "o/a#5": "missing commits",
    "o/a#6": "negative additions",
    "o/a#7": "merged_at before created_at",
    "o/a#8": "merged_at is outside 1970-2200; additions is not an integer",
}


@pytest.fixture(scope="module")
def hand_made(platform) -> PreprocessSecret:
    uri = f"mongodb://127.0.0.1:{platform.service('mongo').port}/"
    database = f"t_hand_{uuid.uuid4().hex[:8]}"
    with pymongo.MongoClient(uri) as client:
        client[database]["pull_requests"].insert_many(
            [{k: v for k, v in doc.items() if v is not ...} for doc in HAND_MADE]
        )
    yield PreprocessSecret(mongo_uri=uri, mongo_database=database, features_uri="unset")
    with pymongo.MongoClient(uri) as client:
        client.drop_database(database)


TOLERANT = PreprocessJobSettings(max_quarantined_share=0.5, read_partitions=2)


@pytest.fixture(scope="module")
def hand_made_run(spark, hand_made, tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hand-made")
    secret = hand_made.model_copy(update={"features_uri": str(root)})
    summary = PreprocessJob(spark, secret, TOLERANT).run()
    return {"root": root, "summary": summary}


def test_hand_computed_features_through_spark(hand_made_run) -> None:
    frame = load_feature_dataset(str(hand_made_run["root"])).frame.set_index("number")
    assert sorted(frame.index) == [1, 2, 3, 4]
    assert frame.loc[4, "author"] == "ann"
    # no look-ahead: ann's pull requests in creation order are #3, #1, #4
    assert frame["author_prior_pull_requests"].to_dict() == {1: 1.0, 2: 0.0, 3: 0.0, 4: 2.0}
    # o/a in creation order: #3 (4), #2 (4), #1 (10), #4 (6): earlier medians 4, 4, 4 (and
    # #3's own 4); the whole-snapshot median, 5, would leak later pull requests into each
    assert frame["repository_median_changes"].to_dict() == {1: 4.0, 2: 4.0, 3: 4.0, 4: 4.0}
    expected = {
        (1, "log_hours_to_merge"): math.log(3),
        (1, "log_author_prior_pull_requests_capped"): math.log(2),
        (1, "size_vs_repository"): math.log(11) - math.log(5),
        (4, "size_vs_repository"): math.log(7) - math.log(5),
        (3, "log_hours_to_merge"): math.log(121),
        (3, "merged_on_weekend"): 1.0,
        (3, "merge_hour_cos"): 1.0,
        (2, "churn_balance"): -1.0,
        (4, "log_author_prior_pull_requests_capped"): math.log(3),
    }
    for (number, name), value in expected.items():
        assert frame.loc[number, name] == pytest.approx(value, abs=1e-12), (number, name)


def test_broken_records_are_quarantined_with_their_reason(hand_made_run) -> None:
    root, summary = hand_made_run["root"], hand_made_run["summary"]
    assert summary["rows"] == 4
    assert summary["quarantined_rows"] == 4
    quarantine = pq.read_table(root / summary["run_id"] / "quarantine").to_pandas()
    assert dict(zip(quarantine["_id"], quarantine["quarantine_reason"], strict=True)) == (
        HAND_MADE_REASONS
    )
    manifest = json.loads((root / summary["run_id"] / "manifest.json").read_text())
    assert manifest["quarantine_reasons"] == {r: 1 for r in HAND_MADE_REASONS.values()}


def test_a_quarantined_record_keeps_the_values_it_was_quarantined_for(hand_made_run) -> None:
    root, summary = hand_made_run["root"], hand_made_run["summary"]
    quarantine = pq.read_table(root / summary["run_id"] / "quarantine").to_pandas()
    raw = dict(zip(quarantine["_id"], quarantine["raw_values"], strict=True))
    assert json.loads(raw["o/a#8"]) == {
        "additions": "many",
        "merged_at": "2300-01-01 00:00:00+00:00",
    }
    assert raw["o/a#6"] is None  # a negative count is a value Spark holds: it is in its column
    assert quarantine.set_index("_id").loc["o/a#6", "additions"] == -3


def test_too_many_quarantined_records_fail_and_publish_nothing(
    spark, hand_made, hand_made_run
) -> None:
    root = hand_made_run["root"]
    latest = (root / "LATEST").read_text()
    secret = hand_made.model_copy(update={"features_uri": str(root)})
    strict = PreprocessJobSettings(max_quarantined_share=0.25)
    job = PreprocessJob(spark, secret, strict)
    with pytest.raises(StageError, match=r"4 of 8 pull requests \(50.0%\).*0.25") as error:
        job.run()
    assert "negative additions" in str(error.value)
    assert (root / "LATEST").read_text() == latest
    assert not (root / job.run_id / "manifest.json").exists()
    assert (root / job.run_id / "quarantine").is_dir()  # kept for inspection


def _killed(*args, **kwargs):
    raise KeyboardInterrupt("killed before the manifest")


def test_a_run_killed_before_its_manifest_is_never_visible(
    spark, hand_made, hand_made_run, monkeypatch
) -> None:
    root = hand_made_run["root"]
    latest = (root / "LATEST").read_text()

    monkeypatch.setattr(job_module, "write_manifest", _killed)
    secret = hand_made.model_copy(update={"features_uri": str(root)})
    job = PreprocessJob(spark, secret, TOLERANT)
    with pytest.raises(KeyboardInterrupt):
        job.run()
    assert list((root / job.run_id / "features").rglob("*.parquet"))  # data was written
    assert (root / "LATEST").read_text() == latest
    assert load_feature_dataset(str(root)).run_id == latest
    with pytest.raises(DatasetError, match="incomplete"):
        load_feature_dataset(str(root), job.run_id)


def test_a_published_run_removes_runs_killed_mid_way_and_keeps_the_rest(
    spark, hand_made, tmp_path, monkeypatch
) -> None:
    secret = hand_made.model_copy(update={"features_uri": str(tmp_path)})
    minutes_ago = datetime.now(UTC) - timedelta(minutes=5)
    refused = PreprocessJob(
        spark, secret, PreprocessJobSettings(max_quarantined_share=0.1), new_run_id(minutes_ago)
    )
    with pytest.raises(StageError, match="PREPROCESS_MAX_QUARANTINED_SHARE"):
        refused.run()
    assert json.loads((tmp_path / refused.run_id / "refused.json").read_text())[
        "quarantine_reasons"
    ] == {r: 1 for r in HAND_MADE_REASONS.values()}
    with monkeypatch.context() as patched:
        patched.setattr(job_module, "write_manifest", _killed)
        killed = PreprocessJob(spark, secret, TOLERANT, new_run_id(minutes_ago))
        with pytest.raises(KeyboardInterrupt):
            killed.run()
    (tmp_path / "notes").mkdir()  # not a run's folder

    within_grace = PreprocessJob(spark, secret, TOLERANT).run()
    assert within_grace["removed_abandoned_runs"] == []
    assert (tmp_path / killed.run_id / "features").is_dir(), "5 minutes: perhaps still running"

    settings = TOLERANT.model_copy(update={"abandoned_after_minutes": 1})
    published = PreprocessJob(spark, secret, settings).run()

    assert published["removed_abandoned_runs"] == [killed.run_id]
    assert not (tmp_path / killed.run_id).exists()
    kept = {path.name for path in tmp_path.iterdir()}
    assert {refused.run_id, within_grace["run_id"], published["run_id"], "notes"} <= kept
    assert load_feature_dataset(str(tmp_path)).run_id == published["run_id"]


def test_s3_round_trip(spark, hand_made, hand_made_run, s3_config) -> None:
    """Published to a real S3 server (SeaweedFS) and read back: same rows, same hash."""
    uri = f"s3://features-{uuid.uuid4().hex[:8]}/pr-anomaly"
    secret = hand_made.model_copy(
        update={
            "features_uri": uri,
            "s3_endpoint_url": s3_config.endpoint_url,
            "s3_access_key_id": s3_config.access_key_id,
            "s3_secret_access_key": s3_config.secret_access_key,
        }
    )
    summary = PreprocessJob(spark, secret, TOLERANT).run()
    assert summary["features_path"].startswith(uri)
    assert summary["content_hash"] == hand_made_run["summary"]["content_hash"]
    remote = load_feature_dataset(uri, s3=s3_config)
    assert remote.run_id == summary["run_id"]
    local = load_feature_dataset(str(hand_made_run["root"]), hand_made_run["summary"]["run_id"])
    pd.testing.assert_frame_equal(
        remote.frame.sort_values("number").reset_index(drop=True),
        local.frame.sort_values("number").reset_index(drop=True),
    )
    with pytest.raises(ValueError, match="no S3 connection"):
        load_feature_dataset(uri)
