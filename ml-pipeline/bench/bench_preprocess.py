"""`make bench-preprocess`: rows/s end to end (MongoDB -> published Parquet), Spark job vs a
single-process pandas implementation of the same feature spec, on the same documents.

Data: the real sample (5,053 pull requests, written by data-fetch) and synthetic
collections generated from it (each copy of the sample becomes new repositories with
jittered sizes and shifted times, keeping the real documents' shape including ``raw``).
FerretDB (our local MongoDB) is the floor of every figure: it scans every document for
every query, so its full-scan rate is printed too, and sizes above BENCH_MAX_LOAD_ROWS
(default 100,000) are not loaded but extrapolated from the measured rates (say so).

    BENCH_SIZES=100000,1000000 BENCH_MAX_LOAD_ROWS=100000 make bench-preprocess
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pymongo

from data_fetch.job import FetchJob
from data_fetch.settings import FetchSecret
from ml_pipeline.feature_frames import (
    attach_context,
    compute_features,
    context_columns,
    feature_problems,
    input_problems,
)
from ml_pipeline.preprocess.job import PUBLISHED_COLUMNS, READ_COLUMNS, PreprocessJob
from ml_pipeline.preprocess.settings import (
    PreprocessJobSettings,
    PreprocessSecret,
    PreprocessSettings,
)
from ml_pipeline.preprocess.spark import build_spark_session
from pipeline_contracts.features import CONTEXT_COLUMNS, FEATURE_NAMES
from pipeline_contracts.pull_requests import LEGACY_AUTHOR_FIELD, PULL_REQUEST_COLUMNS
from pipeline_ops.local_platform import LocalPlatform

ROOT = Path(__file__).resolve().parents[2]
PROJECTION = dict.fromkeys([*(c.name for c in PULL_REQUEST_COLUMNS), LEGACY_AUTHOR_FIELD], 1)


def pandas_preprocess(uri: str, database: str, out: Path) -> int:
    """The same spec in one process: read, validate, context, features, write Parquet."""
    with pymongo.MongoClient(uri, tz_aware=True) as client:
        docs = list(client[database]["pull_requests"].find({}, PROJECTION, batch_size=2000))
    frame = pd.DataFrame(docs)
    frame["author"] = frame.get("author", pd.Series(index=frame.index, dtype=object)).fillna(
        frame.get(LEGACY_AUTHOR_FIELD)
    )
    return pandas_publish(frame, out)


def pandas_publish(frame: pd.DataFrame, out: Path) -> int:
    """Everything after the read, in one process (``frame``: the pull requests' documents):
    validate, context, features, write the features and the quarantine as Parquet."""
    frame = frame.reindex(columns=READ_COLUMNS)
    reasons = input_problems(frame)
    valid = frame[reasons.isna()].copy()
    valid[list(CONTEXT_COLUMNS)] = context_columns(valid)
    features = compute_features(attach_context(valid, None))
    valid[list(FEATURE_NAMES)] = features
    valid = valid[feature_problems(features).isna()]
    table = pa.Table.from_pandas(valid[list(PUBLISHED_COLUMNS)], preserve_index=False)
    pq.write_to_dataset(table, out / "features", partition_cols=["repository"])
    frame[reasons.notna()].assign(quarantine_reason=reasons).to_parquet(out / "quarantine.parquet")
    return len(valid)


def synthesize(client: pymongo.MongoClient, source: str, target: str, rows: int) -> float:
    """``rows`` documents made from the sample's; returns the load time in seconds."""
    sample = list(client[source]["pull_requests"].find({}))
    rng = random.Random(7)
    collection = client[target]["pull_requests"]
    started = time.perf_counter()
    batch: list[dict] = []
    for index in range(rows):
        copy, doc = divmod(index, len(sample))
        original = sample[doc]
        repository = f"{original['repository']}-{copy:03d}"
        shift = timedelta(days=copy)
        scale = rng.uniform(0.5, 2.0)
        synthetic = {
            **original,
            "_id": f"{repository}#{original['number']}",
            "repository": repository,
            "additions": int(original["additions"] * scale),
            "deletions": int(original["deletions"] * scale),
        }
        for name in ("created_at", "updated_at", "closed_at", "merged_at"):
            if synthetic.get(name) is not None:
                synthetic[name] = synthetic[name] + shift
        batch.append(synthetic)
        if len(batch) == 5000:
            collection.insert_many(batch, ordered=False)
            batch = []
    if batch:
        collection.insert_many(batch, ordered=False)
    return time.perf_counter() - started


def scan_seconds(client: pymongo.MongoClient, database: str) -> float:
    started = time.perf_counter()
    for _ in client[database]["pull_requests"].find({}, PROJECTION, batch_size=2000):
        pass
    return time.perf_counter() - started


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def main() -> int:
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "100000,1000000").split(",") if s]
    max_load = int(os.environ.get("BENCH_MAX_LOAD_ROWS", "100000"))
    partitions = int(os.environ.get("BENCH_READ_PARTITIONS", "2"))
    os.environ.setdefault("PYSPARK_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    work = Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    platform = LocalPlatform(work / "platform")
    results: list[dict] = []
    try:
        platform.up(["mongo"])
        uri = f"mongodb://127.0.0.1:{platform.service('mongo').port}/"
        client = pymongo.MongoClient(uri)
        load_s, _ = timed(
            lambda: FetchJob(
                FetchSecret(mongo_uri=uri, mongo_database="sample"),
                sorted((ROOT / "data" / "samples").glob("*.prs.jsonl.gz")),
            ).run()
        )
        sample_rows = client["sample"]["pull_requests"].count_documents({})
        print(f"loaded the real sample: {sample_rows} documents in {load_s:.1f} s", flush=True)
        started, spark = timed(
            lambda: build_spark_session(PreprocessSettings(jars_dir=str(ROOT / ".tools/jars")))
        )
        print(f"Spark session ({spark.sparkContext.master}) started in {started:.1f} s")

        def measure(label: str, database: str, rows: int, readers: tuple[str, ...]) -> None:
            scan = scan_seconds(client, database)
            print(f"[{label}] FerretDB full scan: {scan:.1f} s ({rows / scan:,.0f} docs/s)")
            row = {"data": label, "rows": rows, "scan_s": scan}
            for reader in readers:
                secret = PreprocessSecret(
                    mongo_uri=uri, mongo_database=database, features_uri=str(work / reader)
                )
                settings = PreprocessJobSettings(reader=reader, read_partitions=partitions)
                seconds, summary = timed(PreprocessJob(spark, secret, settings).run)
                row[f"spark_{reader}_s"] = seconds
                print(f"[{label}] Spark ({reader}): {seconds:.1f} s, {summary['rows']} rows")
            out = work / f"pandas-{label}"
            seconds, published = timed(lambda: pandas_preprocess(uri, database, out))
            shutil.rmtree(out, ignore_errors=True)
            row["pandas_s"] = seconds
            print(f"[{label}] pandas: {seconds:.1f} s, {published} rows", flush=True)
            results.append(row)

        measure("real sample", "sample", sample_rows, ("partitioned", "connector"))
        for size in sizes:
            label = f"synthetic {size:,}"
            if size > max_load:
                results.append({"data": label, "rows": size, "extrapolated": True})
                continue
            seconds = synthesize(client, "sample", f"syn{size}", size)
            print(f"[{label}] loaded in {seconds:.1f} s ({size / seconds:,.0f} docs/s)")
            measure(label, f"syn{size}", size, ("partitioned",))
            results[-1]["load_s"] = seconds
            client.drop_database(f"syn{size}")
        spark.stop()
    finally:
        platform.down()
        shutil.rmtree(work, ignore_errors=True)
    report(results)
    return 0


def report(results: list[dict]) -> None:
    measured = [r for r in results if not r.get("extrapolated")]
    base = measured[-1]
    print()
    print("| data | rows | FerretDB scan rows/s | Spark rows/s | pandas rows/s | Spark/pandas |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in results:
        if row.get("extrapolated"):
            # every step is linear in the rows here (scans, window sorts aside): scale the
            # largest measured size, and say that it is an estimate
            factor = row["rows"] / base["rows"]
            spark_s = base["spark_partitioned_s"] * factor
            pandas_s = base["pandas_s"] * factor
            load = base.get("load_s", 0) * factor
            print(
                f"| {row['data']} (extrapolated, not run: load alone ~{load / 60:.0f} min) "
                f"| {row['rows']:,} | ~{base['rows'] / base['scan_s']:,.0f} "
                f"| ~{row['rows'] / spark_s:,.0f} | ~{row['rows'] / pandas_s:,.0f} "
                f"| ~{pandas_s / spark_s:.2f} |"
            )
            continue
        spark_s = row["spark_partitioned_s"]
        print(
            f"| {row['data']} | {row['rows']:,} | {row['rows'] / row['scan_s']:,.0f} "
            f"| {row['rows'] / spark_s:,.0f} | {row['rows'] / row['pandas_s']:,.0f} "
            f"| {row['pandas_s'] / spark_s:.2f} |"
        )
        if "spark_connector_s" in row:
            print(
                f"| {row['data']}, connector reader | {row['rows']:,} | | "
                f"{row['rows'] / row['spark_connector_s']:,.0f} | | "
                f"{row['pandas_s'] / row['spark_connector_s']:.2f} |"
            )
    print("\nSpark/pandas > 1 means Spark is faster (ratio of wall times).")
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
