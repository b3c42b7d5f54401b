"""PreprocessJob: MongoDB -> features (Spark) -> Parquet under a run id, then a manifest."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from ml_pipeline.datasets import LATEST, MANIFEST
from ml_pipeline.features import (
    CONTEXT_COLUMNS,
    FEATURE_NAMES,
    FEATURE_SPEC_VERSION,
    compute_features,
)
from ml_pipeline.preprocess.settings import PreprocessSecret
from pipeline_common.storage import StorageLocation

log = logging.getLogger(__name__)

# The connector cannot infer a schema from FerretDB ($sample is not implemented there),
# and an explicit schema is better anyway: a renamed field fails here, not downstream.
SOURCE_SCHEMA = (
    "_id string, repository string, number long, author_login string, title string, body string, "
    "created_at timestamp, updated_at timestamp, merged_at timestamp, "
    "additions long, deletions long, changed_files long, commits long"
)
KEY_COLUMNS = ("repository", "number", "author", "created_at", "merged_at")
RAW_COLUMNS = ("additions", "deletions", "changed_files", "commits")
OUTPUT_SCHEMA = ", ".join(
    [
        "repository string, number long, author string",
        "created_at timestamp, merged_at timestamp",
        *(f"{name} long" for name in RAW_COLUMNS),
        *(f"{name} double" for name in (*CONTEXT_COLUMNS, *FEATURE_NAMES)),
    ]
)


def read_pull_requests(spark: SparkSession, secret: PreprocessSecret) -> DataFrame:
    return (
        spark.read.format("mongodb")
        .schema(SOURCE_SCHEMA)
        .option("connection.uri", secret.mongo_uri.get_secret_value())
        .option("database", secret.mongo_database)
        .option("collection", secret.mongo_collection)
        # FerretDB lacks $collStats/$sample, which the sampling partitioners need.
        .option(
            "partitioner",
            "com.mongodb.spark.sql.connector.read.partitioner.SinglePartitionPartitioner",
        )
        .load()
    )


def _features_of_partition(batches):
    for batch in batches:
        features = compute_features(batch)
        columns = [*KEY_COLUMNS, *RAW_COLUMNS, *CONTEXT_COLUMNS]
        yield pd.concat([batch[columns], features], axis=1)


def with_context(pull_requests: DataFrame) -> DataFrame:
    """The context columns of the feature spec, as of each pull request (no look-ahead)."""
    by_author = Window.partitionBy("repository", "author").orderBy("created_at", "number")
    by_repository = Window.partitionBy("repository")
    changes = F.col("additions") + F.col("deletions")
    return pull_requests.withColumn(
        "author_prior_pull_requests", (F.row_number().over(by_author) - 1).cast("double")
    ).withColumn(
        "repository_median_changes",
        F.median(changes).over(by_repository).cast("double"),
    )


def build_features(pull_requests: DataFrame) -> DataFrame:
    renamed = pull_requests.withColumnRenamed("author_login", "author")
    return with_context(renamed).mapInPandas(_features_of_partition, schema=OUTPUT_SCHEMA)


@dataclass
class PreprocessJob:
    spark: SparkSession
    secret: PreprocessSecret
    run_id: str = field(
        default_factory=lambda: (
            datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
        )
    )

    def run(self) -> dict[str, Any]:
        root = StorageLocation.parse(self.secret.features_uri)
        run_dir = root.child(self.run_id)
        features = build_features(read_pull_requests(self.spark, self.secret))
        data = run_dir.child("features")
        features.write.mode("errorifexists").partitionBy("repository").parquet(data.spark_uri)
        rows = self.spark.read.parquet(data.spark_uri).count()
        manifest = {
            "run_id": self.run_id,
            "created_at": datetime.now(UTC).isoformat(),
            "feature_spec_version": FEATURE_SPEC_VERSION,
            "features": list(FEATURE_NAMES),
            "rows": rows,
            "data_path": "features",
            "source": f"mongodb:{self.secret.mongo_database}.{self.secret.mongo_collection}",
        }
        filesystem = run_dir.filesystem()
        # The manifest is written last: a data set without one is incomplete.
        with filesystem.open_output_stream(run_dir.child(MANIFEST).path) as out:
            out.write(json.dumps(manifest, indent=2).encode())
        publish_latest(root, self.run_id)
        log.info("published features", extra={"run_id": self.run_id, "rows": rows})
        return {
            "stage": "spark-preprocess",
            "run_id": self.run_id,
            "rows": rows,
            "features_path": data.uri,
            "manifest": run_dir.child(MANIFEST).uri,
        }


def publish_latest(root: StorageLocation, run_id: str) -> None:
    """Point LATEST at ``run_id``; a reader sees the old or the new id, never half."""
    filesystem = root.filesystem()
    tmp = root.child(f".{LATEST}.{uuid.uuid4().hex}")
    with filesystem.open_output_stream(tmp.path) as out:
        out.write(run_id.encode())
    filesystem.move(tmp.path, root.child(LATEST).path)
