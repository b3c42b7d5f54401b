"""`spark-preprocess`: build features from MongoDB with Spark and publish them as Parquet."""

from __future__ import annotations

import argparse
import sys

from pipeline_common.cli import run_stage
from pipeline_common.settings import load_settings
from pipeline_common.vault import load_stage_secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="spark-preprocess",
        description="Read pull requests from MongoDB with Spark, compute the features and "
        "publish them as Parquet under a new run id. Connections come from the stage's Vault "
        "secret (VAULT_* variables); Spark from SPARK_MASTER, SPARK_JARS_DIR, "
        "SPARK_DRIVER_MEMORY, SPARK_SHUFFLE_PARTITIONS; the job from PREPROCESS_READER "
        "(partitioned|connector), PREPROCESS_READ_PARTITIONS, PREPROCESS_MAX_QUARANTINED_SHARE.",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    def job() -> dict:
        from ml_pipeline.preprocess.job import PreprocessJob
        from ml_pipeline.preprocess.settings import (
            PreprocessJobSettings,
            PreprocessSecret,
            PreprocessSettings,
        )
        from ml_pipeline.preprocess.spark import build_spark_session

        settings = load_settings(PreprocessSettings)
        job_settings = load_settings(PreprocessJobSettings)
        secret = load_stage_secret(PreprocessSecret)
        spark = build_spark_session(settings)
        try:
            return PreprocessJob(spark, secret, job_settings).run()
        finally:
            spark.stop()

    return run_stage("spark-preprocess", job, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
