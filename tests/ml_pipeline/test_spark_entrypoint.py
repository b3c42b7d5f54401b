"""The spark-preprocess image's entrypoint: the stage CLI by default, Spark's `driver` and
`executor` pod contract for the Spark Operator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ENTRYPOINT = Path(__file__).resolve().parents[2] / "ml-pipeline" / "docker" / "spark-entrypoint.sh"


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_")}
    base["PATH"] = f"{Path(sys.executable).parent}:{base['PATH']}"
    return subprocess.run(
        [str(ENTRYPOINT), *args], env={**base, **(env or {})}, cwd=cwd,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_without_a_spark_role_it_is_the_stage_cli() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: spark-preprocess")


def test_an_executor_without_the_drivers_environment_names_what_is_missing() -> None:
    result = _run("executor")
    assert result.returncode == 2
    assert "SPARK_DRIVER_URL is not set" in result.stderr


def test_the_driver_role_submits_the_application_in_client_mode(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        "from pyspark.sql import SparkSession\n"
        "spark = SparkSession.builder.getOrCreate()\n"
        "conf = spark.sparkContext.getConf()\n"
        "print('deploy-mode', conf.get('spark.submit.deployMode'))\n"
        "print('bind', conf.get('spark.driver.bindAddress'))\n"
        "print('rows', spark.range(7).count())\n"
        "spark.stop()\n"
    )
    env = {"SPARK_DRIVER_BIND_ADDRESS": "127.0.0.1", "SPARK_LOCAL_IP": "127.0.0.1"}
    result = _run(
        "driver", "--master", "local[1]", "--conf", "spark.ui.enabled=false", str(app),
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "deploy-mode client" in result.stdout
    assert "bind 127.0.0.1" in result.stdout
    assert "rows 7" in result.stdout


def test_a_local_session_started_by_hand_runs_its_python_workers_in_this_environment(tmp_path):
    """As README's `env` command runs the stage: no PYSPARK_PYTHON, and a PATH whose first
    python3 lacks this project. Spark's Python workers must still import ml_pipeline."""
    jars = Path(__file__).resolve().parents[2] / ".tools" / "jars"
    code = (
        "from ml_pipeline.preprocess.settings import PreprocessSettings\n"
        "from ml_pipeline.preprocess.spark import build_spark_session\n"
        f"spark = build_spark_session(PreprocessSettings(jars_dir={str(jars)!r}))\n"
        "def spec(_):\n"
        "    from pipeline_contracts.features import FEATURE_SPEC_VERSION\n"
        "    return [FEATURE_SPEC_VERSION]\n"
        "print('workers read spec', spark.sparkContext.parallelize([0], 1).map(spec).first())\n"
        "spark.stop()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))}
    env["PATH"] = "/usr/bin:/bin"
    result = subprocess.run(
        [sys.executable, "-c", code], env={**env, "SPARK_LOCAL_IP": "127.0.0.1"},
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "workers read spec" in result.stdout
