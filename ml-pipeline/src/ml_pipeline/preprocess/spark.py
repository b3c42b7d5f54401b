"""The Spark session, configured for local[*] (the embedded default) or a cluster."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from ml_pipeline.preprocess.settings import PreprocessSettings
from pipeline_common.settings import ConfigError


def build_spark_session(
    settings: PreprocessSettings, app_name: str = "spark-preprocess"
) -> SparkSession:
    jars_dir = Path(settings.jars_dir)
    jars = sorted(str(p.resolve()) for p in jars_dir.glob("*.jar"))
    if not jars:
        raise ConfigError(
            f"no connector jars in SPARK_JARS_DIR={jars_dir}: run `make setup` (Maven fetches them)"
        )
    builder = SparkSession.builder.appName(app_name)
    master = settings.master
    if master is None and not submitted_by_spark_submit():
        master = "local[*]"
    if master is not None:
        builder = builder.master(master)
    if not submitted_by_spark_submit():
        # Spark starts here: the connector jars join the class path at launch. Under
        # spark-submit (the cluster's driver pod) the JVM already runs, with the jars on the
        # class path of the driver and of the executors (the image's entrypoint); listing
        # them in spark.jars too would make every executor copy them into its working
        # directory.
        builder = builder.config("spark.jars", ",".join(jars))
    builder = (
        builder.config("spark.driver.memory", settings.driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    if master is not None and master.startswith("local"):
        builder = builder.config("spark.driver.host", "127.0.0.1").config(
            "spark.driver.bindAddress", "127.0.0.1"
        )
        # Python workers must run the driver's interpreter, the one this project is
        # installed in, not whatever `python3` is first on PATH. PySpark reads only the
        # environment for it (not a conf), so the stage sets it; a PYSPARK_PYTHON given wins.
        if not os.environ.get("PYSPARK_PYTHON"):
            os.environ["PYSPARK_PYTHON"] = sys.executable
    return builder.getOrCreate()


def submitted_by_spark_submit() -> bool:
    """spark-submit (the Spark Operator in the cluster) starts the JVM first and hands the
    Python driver its gateway; its master and resources then come from the submission."""
    return "PYSPARK_GATEWAY_PORT" in os.environ
