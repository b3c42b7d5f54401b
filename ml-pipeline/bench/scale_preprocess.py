"""One point of `make bench-scale`'s preprocessing curve: publish the features of a Parquet
file of pull requests (``pipeline_ops.synthetic_pulls``) with Spark (``PreprocessJob.publish``:
everything the stage does after reading MongoDB, in local[*], with the read and shuffle
partitions and the driver memory given) or with the single-process pandas reference of
``bench_preprocess.py``. Prints one JSON line: rows published and seconds.

    python ml-pipeline/bench/scale_preprocess.py --engine spark --input IN.parquet --out DIR \
        --partitions 12 --driver-memory 2g

The cluster point runs this same file as a SparkApplication's program (from a ConfigMap, in
the spark-preprocess image; ``pipeline_ops.bench_scale_cluster``): under spark-submit the
master, the driver's memory and the connector jars come from the submission and the image,
and the Spark path needs nothing beside this file (the pandas reference is imported only for
``--engine pandas``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def with_document_id(frame: pd.DataFrame) -> pd.DataFrame:
    """data-fetch's ``_id`` of each pull request (``owner/name#number``)."""
    return frame.assign(_id=frame["repository"] + "#" + frame["number"].astype(str))


def run_pandas(source: Path, out: Path, partitions: int, driver_memory: str) -> dict:
    from bench_preprocess import pandas_publish

    started = time.perf_counter()
    frame = with_document_id(pd.read_parquet(source))
    rows = pandas_publish(frame, out)
    return {"rows": rows, "seconds": time.perf_counter() - started}


def run_spark(source: Path, out: Path, partitions: int, driver_memory: str) -> dict:
    from pyspark.sql import functions as F

    from ml_pipeline.preprocess.job import READ_COLUMNS, PreprocessJob
    from ml_pipeline.preprocess.mongo_source import RAW_VALUES, READ_PROBLEM
    from ml_pipeline.preprocess.settings import (
        PreprocessJobSettings,
        PreprocessSecret,
        PreprocessSettings,
    )
    from ml_pipeline.preprocess.spark import build_spark_session

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    started = time.perf_counter()
    spark = build_spark_session(
        PreprocessSettings(
            # a driver pod: the image's SPARK_JARS_DIR (build_spark_session lists none there)
            jars_dir=os.environ.get("SPARK_JARS_DIR", str(ROOT / ".tools" / "jars")),
            shuffle_partitions=partitions,
            driver_memory=driver_memory,
        )
    )
    session = time.perf_counter() - started
    # The file read in ``partitions`` parts, as the stage's MongoDB reader plans about
    # PREPROCESS_READ_PARTITIONS (without this Spark would split it by its size and cores);
    # the same number for the shuffle (SPARK_SHUFFLE_PARTITIONS): each task's rows are
    # then about rows / partitions in both.
    spark.conf.set("spark.sql.files.maxPartitionBytes", source.stat().st_size // partitions + 1)
    # the rows as the MongoDB reader gives them (READ_SCHEMA): nothing for the reader to report
    records = (
        spark.read.parquet(str(source))
        .withColumn("_id", F.concat_ws("#", "repository", F.col("number").cast("string")))
        .withColumn(READ_PROBLEM, F.lit(None).cast("string"))
        .withColumn(RAW_VALUES, F.lit(None).cast("string"))
        .select(*READ_COLUMNS)
    )
    secret = PreprocessSecret(
        mongo_uri="mongodb://127.0.0.1:9/unused", mongo_database="unused", features_uri=str(out)
    )
    started = time.perf_counter()
    summary = PreprocessJob(spark, secret, PreprocessJobSettings()).publish(
        records, f"parquet:{source.name}"
    )
    seconds = time.perf_counter() - started
    spark.stop()
    return {"rows": summary["rows"], "seconds": seconds, "session_seconds": session}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("spark", "pandas"), required=True)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--partitions",
        type=int,
        default=4,
        help="Spark: read and shuffle partitions (the stage's defaults: 4 and 4)",
    )
    parser.add_argument(
        "--driver-memory", default="1g", help="Spark: spark.driver.memory (the stage's: 1g)"
    )
    args = parser.parse_args()
    run = run_spark if args.engine == "spark" else run_pandas
    result = run(args.input, args.out, args.partitions, args.driver_memory)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
