"""PreprocessJob: MongoDB -> validated features (Spark) -> Parquet under a run id, then a
manifest, then LATEST.

Flow: read the pull requests in parallel partitions; quarantine records that break the
spec's input rules; per repository (``applyInPandas``), compute the context columns as of
each pull request (no look-ahead) and the features, with the same code serving runs
(:func:`context_columns`, :func:`compute_features`); quarantine non-finite feature rows; write
both data sets from the executors; fail if too much was quarantined; record statistics
and a content hash in the manifest, written last; move LATEST. The data set is never
collected to the driver, only aggregates and the list of files written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from ml_pipeline.feature_frames import compute_features, context_columns, feature_problems
from ml_pipeline.preprocess.mongo_source import (
    DOCUMENT_SCHEMA,
    FORMAT,
    RAW_VALUES,
    READ_PROBLEM,
    READ_SCHEMA,
    PullRequestDataSource,
)
from ml_pipeline.preprocess.publish import (
    REFUSED,
    new_run_id,
    publish_latest,
    remove_abandoned_runs,
    run_started_at,
    write_manifest,
    write_parquet,
)
from ml_pipeline.preprocess.settings import PreprocessJobSettings, PreprocessSecret
from pipeline_common.cli import StageError
from pipeline_common.storage import StorageLocation
from pipeline_contracts.features import (
    CONTEXT_COLUMNS,
    FEATURE_NAMES,
    FEATURE_SPEC_VERSION,
    MERGED_BEFORE_CREATED,
    feature_spec_document,
    missing_reason,
    negative_reason,
)
from pipeline_contracts.pull_requests import (
    FEATURE_INPUT_COLUMNS,
    KEY_COLUMNS,
    LEGACY_AUTHOR_FIELD,
    NON_NEGATIVE_COLUMNS,
    REQUIRED_COLUMNS,
)

__all__ = [
    "PreprocessJob",
    "build_features",
    "publish_latest",
    "split_quarantine",
]

log = logging.getLogger(__name__)

# The connector cannot infer a schema from FerretDB ($sample is not implemented there),
# and an explicit schema is better anyway: a renamed field fails here, not downstream.
# Both author fields are read (data-fetch renamed author_login to author) and coalesced.
# The connector reads a field of the wrong type as null: it reports no read problems.
CONNECTOR_SCHEMA = f"{DOCUMENT_SCHEMA}, {LEGACY_AUTHOR_FIELD} string"
READ_COLUMNS = [part.split()[0] for part in READ_SCHEMA.split(", ")]

RAW_COLUMNS = tuple(c for c in FEATURE_INPUT_COLUMNS if c not in KEY_COLUMNS)
PUBLISHED_COLUMNS = (*KEY_COLUMNS, *RAW_COLUMNS, *CONTEXT_COLUMNS, *FEATURE_NAMES)
REASON = "quarantine_reason"
_TYPES = dict(part.split() for part in READ_SCHEMA.split(", "))
FEATURE_ROWS_SCHEMA = ", ".join(
    [
        "_id string",
        *(f"{name} {_TYPES[name]}" for name in (*KEY_COLUMNS, *RAW_COLUMNS)),
        *(f"{name} double" for name in (*CONTEXT_COLUMNS, *FEATURE_NAMES)),
        f"{REASON} string",
    ]
)
QUARANTINE_COLUMNS = (*READ_COLUMNS, REASON)


def read_pull_requests(
    spark: SparkSession, secret: PreprocessSecret, settings: PreprocessJobSettings
) -> DataFrame:
    """The pull requests as :data:`READ_SCHEMA` rows, from the reader ``settings`` names."""
    uri = secret.mongo_uri.get_secret_value()
    if settings.reader == "connector":
        frame = (
            spark.read.format("mongodb")
            .schema(CONNECTOR_SCHEMA)
            .option("connection.uri", uri)
            .option("database", secret.mongo_database)
            .option("collection", secret.mongo_collection)
            # FerretDB lacks $collStats/$sample, which the sampling partitioners need.
            .option(
                "partitioner",
                "com.mongodb.spark.sql.connector.read.partitioner.SinglePartitionPartitioner",
            )
            .load()
        )
        return (
            frame.withColumn("author", F.coalesce("author", LEGACY_AUTHOR_FIELD))
            .withColumn(READ_PROBLEM, F.lit(None).cast("string"))
            .withColumn(RAW_VALUES, F.lit(None).cast("string"))
            .select(*READ_COLUMNS)
        )
    spark.dataSource.register(PullRequestDataSource)
    return (
        spark.read.format(FORMAT)
        .option("uri", uri)
        .option("database", secret.mongo_database)
        .option("collection", secret.mongo_collection)
        .option("partitions", str(settings.read_partitions))
        .load()
    )


def input_problem() -> Column:
    """The reader's problems first (a field it read as null was not missing), then the
    spec's input rules (``features.input_problems``), as one Spark expression."""
    checks = [(F.col(READ_PROBLEM).isNotNull(), F.col(READ_PROBLEM))]
    checks += [(F.col(c).isNull(), F.lit(missing_reason(c))) for c in REQUIRED_COLUMNS]
    checks += [(F.col(c) < 0, F.lit(negative_reason(c))) for c in NON_NEGATIVE_COLUMNS]
    checks.append((F.col("merged_at") < F.col("created_at"), F.lit(MERGED_BEFORE_CREATED)))
    reason = F.lit(None).cast("string")
    for condition, text in reversed(checks):
        reason = F.when(condition, text).otherwise(reason)
    return reason


def _features_of_repository(rows: pd.DataFrame) -> pd.DataFrame:
    """One repository's valid pull requests -> context columns (as of each pull request,
    from the earlier ones only) and features, with the same pandas/numpy code as the
    single-process reference and serving."""
    with_context = pd.concat([rows, context_columns(rows)], axis=1)
    features = compute_features(with_context)
    columns = ["_id", *KEY_COLUMNS, *RAW_COLUMNS, *CONTEXT_COLUMNS]
    out = pd.concat([with_context[columns], features], axis=1)
    out[REASON] = feature_problems(features)
    return out


def build_features(pull_requests: DataFrame) -> DataFrame:
    """Every :data:`READ_SCHEMA` row with its context columns and features, and
    ``quarantine_reason`` set (features null) where the row broke the spec.

    The context of a pull request is its repository's history before it, so the valid rows
    are grouped by repository (``applyInPandas``: one repository's rows in one Python call;
    Spark 4 allows no ordered window frame for an exact median)."""
    checked = pull_requests.withColumn(REASON, input_problem())
    valid = checked.filter(F.col(REASON).isNull()).drop(REASON)
    featured = valid.groupBy("repository").applyInPandas(
        _features_of_repository, FEATURE_ROWS_SCHEMA
    )
    bad_input = checked.filter(F.col(REASON).isNotNull())
    return featured.unionByName(bad_input, allowMissingColumns=True)


def split_quarantine(rows: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(published rows, quarantined rows with their reason) of :func:`build_features`."""
    published = rows.filter(F.col(REASON).isNull()).select(*PUBLISHED_COLUMNS)
    quarantined = rows.filter(F.col(REASON).isNotNull()).select(*QUARANTINE_COLUMNS)
    return published, quarantined


def _content_sums(frame: DataFrame, prefix: str) -> list[Column]:
    """Order-independent digest parts of a data set: its row count and the sums of two
    independent 64-bit row hashes (a file layout or row order change leaves them equal)."""
    columns = list(frame.columns)
    return [
        F.count(F.lit(1)).alias(f"{prefix}rows"),
        F.sum(F.xxhash64(*columns).cast("decimal(38,0)")).cast("string").alias(f"{prefix}xx"),
        F.sum(F.hash(*columns).cast("decimal(38,0)")).cast("string").alias(f"{prefix}h"),
    ]


def _aggregate(frame: DataFrame, *columns: Column) -> dict[str, Any]:
    """The one row of an aggregation over the whole of ``frame``, as a dict."""
    row = frame.agg(*columns).first()
    if row is None:  # without groupBy Spark returns one row, even for an empty frame
        raise RuntimeError("an aggregation over a whole data set returned no row")
    return row.asDict()


def feature_statistics(
    published: DataFrame,
) -> tuple[dict[str, dict[str, float | None]], dict]:
    """Per-column count/mean/stddev/min/max of the published features and context columns,
    and the published rows' content sums, in one pass."""
    numeric = [*CONTEXT_COLUMNS, *FEATURE_NAMES]
    aggregates = [*_content_sums(published, "")]
    for name in numeric:
        aggregates += [
            F.mean(name).alias(f"{name}__mean"),
            F.stddev_pop(name).alias(f"{name}__stddev"),
            F.min(name).alias(f"{name}__min"),
            F.max(name).alias(f"{name}__max"),
        ]
    row = _aggregate(published, *aggregates)
    stats = {
        name: {
            stat: (None if row[f"{name}__{stat}"] is None else float(row[f"{name}__{stat}"]))
            for stat in ("mean", "stddev", "min", "max")
        }
        for name in numeric
    }
    return stats, {k: row[k] for k in ("rows", "xx", "h")}


def content_hash(document: dict) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class PreprocessJob:
    spark: SparkSession
    secret: PreprocessSecret
    settings: PreprocessJobSettings = field(default_factory=PreprocessJobSettings)
    run_id: str = field(default_factory=new_run_id)

    def run(self) -> dict[str, Any]:
        source = f"mongodb:{self.secret.mongo_database}.{self.secret.mongo_collection}"
        return self.publish(read_pull_requests(self.spark, self.secret, self.settings), source)

    def publish(self, records: DataFrame, source: str) -> dict[str, Any]:
        """Everything :meth:`run` does after reading MongoDB, for ``records`` in
        :data:`READ_SCHEMA` read from ``source`` (the benchmarks hand in rows from a file)."""
        s3 = self.secret.s3()
        root = StorageLocation.parse(self.secret.features_uri)
        if root.scheme == "s3" and s3 is None:
            raise StageError(
                f"features_uri {root.uri} is in S3 but the stage secret has no s3_endpoint_url/"
                "s3_access_key_id/s3_secret_access_key: add them to the Vault secret"
            )
        run_dir = root.child(self.run_id)
        # read the source once: every later step (two writes, statistics) starts from here
        records = records.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            return self._publish(records, root, run_dir, source, s3)
        finally:
            records.unpersist()

    def _publish(self, records, root, run_dir, source, s3) -> dict[str, Any]:
        snapshot = _aggregate(
            records,
            *_content_sums(records, "input_"),
            *(
                F.date_format(agg("created_at"), "yyyy-MM-dd'T'HH:mm:ssXXX").alias(name)
                for agg, name in ((F.min, "created_at_min"), (F.max, "created_at_max"))
            ),
        )
        total = snapshot["input_rows"]
        if total == 0:
            raise StageError(f"{source} holds no pull requests: run data-fetch first")

        rows_with_reasons = build_features(records).persist(StorageLevel.MEMORY_AND_DISK)
        published, quarantined = split_quarantine(rows_with_reasons)
        try:
            quarantine_files = write_parquet(
                quarantined, run_dir.child("quarantine"), s3, sort_by=("_id",)
            )
            reasons = {
                r[REASON]: r["count"]
                for r in quarantined.groupBy(REASON).count().orderBy(REASON).collect()
            }
            quarantined_rows = sum(f["rows"] for f in quarantine_files)
            share = quarantined_rows / total
            limit = self.settings.max_quarantined_share
            if share > limit:
                refusal = {
                    "run_id": self.run_id,
                    "refused_at": datetime.now(UTC).isoformat(),
                    "documents": total,
                    "quarantined_rows": quarantined_rows,
                    "quarantine_reasons": reasons,
                    "max_quarantined_share": limit,
                    "quarantine_path": "quarantine",
                    "quarantine_files": quarantine_files,
                }
                write_manifest(run_dir, s3, refusal, name=REFUSED)
                raise StageError(
                    f"{quarantined_rows} of {total} pull requests ({share:.1%}) broke the feature "
                    f"spec, more than PREPROCESS_MAX_QUARANTINED_SHARE={limit}; reasons: "
                    f"{reasons}. The rows and reasons are in {run_dir.child('quarantine').uri}; "
                    "nothing was published: fix the source data or raise the limit"
                )
            feature_files = write_parquet(
                published,
                run_dir.child("features"),
                s3,
                partition_by="repository",
                sort_by=("repository", "number"),
            )
            statistics, sums = feature_statistics(published)
            quarantine_sums = _aggregate(quarantined, *_content_sums(quarantined, ""))
        finally:
            rows_with_reasons.unpersist()

        rows = sum(f["rows"] for f in feature_files)
        schema = [{"name": f.name, "type": f.dataType.simpleString()} for f in published.schema]
        manifest = {
            "run_id": run_dir.path.rsplit("/", 1)[-1],
            "created_at": datetime.now(UTC).isoformat(),
            "feature_spec_version": FEATURE_SPEC_VERSION,
            "feature_spec": feature_spec_document(),
            "features": list(FEATURE_NAMES),
            "schema": schema,
            "rows": rows,
            "quarantined_rows": quarantined_rows,
            "quarantine_reasons": reasons,
            "max_quarantined_share": self.settings.max_quarantined_share,
            "data_path": "features",
            "quarantine_path": "quarantine",
            "partitioning": ["repository"],
            "files": feature_files,
            "quarantine_files": quarantine_files,
            "statistics": statistics,
            "source": source,
            "input_snapshot": {
                "source": source,
                "reader": self.settings.reader,
                "documents": total,
                "created_at_min": snapshot["created_at_min"],
                "created_at_max": snapshot["created_at_max"],
                "content_hash": content_hash(
                    {"rows": total, "xx": snapshot["input_xx"], "h": snapshot["input_h"]}
                ),
            },
            # same input and spec -> same hash, whatever the partitioning or file layout
            "content_hash": content_hash(
                {
                    "feature_spec_version": FEATURE_SPEC_VERSION,
                    "schema": schema,
                    "features": sums,
                    "quarantine": quarantine_sums,
                }
            ),
        }
        # The manifest is written last: a run without one is incomplete and never read.
        write_manifest(run_dir, s3, manifest)
        publish_latest(root, manifest["run_id"], s3)
        grace = timedelta(minutes=self.settings.abandoned_after_minutes)
        started = run_started_at(self.run_id) or datetime.now(UTC)
        abandoned = remove_abandoned_runs(root, s3, started - grace)
        log.info(
            "published features",
            extra={"run_id": manifest["run_id"], "rows": rows, "quarantined": quarantined_rows},
        )
        return {
            "stage": "spark-preprocess",
            "run_id": manifest["run_id"],
            "rows": rows,
            "quarantined_rows": quarantined_rows,
            "content_hash": manifest["content_hash"],
            "features_path": run_dir.child("features").uri,
            "manifest": run_dir.child("manifest.json").uri,
            "removed_abandoned_runs": abandoned,
        }
