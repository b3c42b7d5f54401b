"""Run the pipeline's stages against the local platform, each as its own process with
only the VAULT_* contract in its environment, exactly as a pod would run it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from pipeline_ops.local_env import LocalEnvironment
from pipeline_ops.localstack import DEFAULT_SERVICES, LocalPlatform, free_port
from pipeline_ops.paths import PROJECT_ROOT, TOOLS_DIR

log = logging.getLogger(__name__)


class StageFailedError(RuntimeError):
    pass


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def stage_process_env(env: LocalEnvironment, stage: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    return {
        **base,
        **env.stage_env(stage),
        "SPARK_JARS_DIR": str(TOOLS_DIR / "jars"),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }


def run_stage(env: LocalEnvironment, stage: str, argv: list[str]) -> dict[str, Any]:
    """Run one stage entrypoint; its JSON summary (stdout) is returned, logs pass through."""
    started = time.monotonic()
    print(
        f"==> {stage}: {' '.join(Path(argv[0]).name for _ in [0])} {' '.join(argv[1:])}", flush=True
    )
    result = subprocess.run(
        argv, env=stage_process_env(env, stage), cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        raise StageFailedError(f"{stage} exited with {result.returncode}")
    summary = json.loads(result.stdout)
    print(f"<== {stage} done in {time.monotonic() - started:.1f}s", flush=True)
    return summary


def serve_and_score(
    env: LocalEnvironment, record: dict[str, Any], alias: str, timeout: float = 120
) -> dict[str, Any]:
    """Start model-serving on a free port, wait until ready, score one record, stop it."""
    port = free_port()
    argv = [_bin("model-serving"), "--host", "127.0.0.1", "--port", str(port)]
    print(f"==> model-serving: {' '.join(argv[1:])}", flush=True)
    started = time.monotonic()
    serving_env = {**stage_process_env(env, "model-serving"), "SERVING_MODEL_ALIAS": alias}
    process = subprocess.Popen(argv, env=serving_env, cwd=PROJECT_ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise StageFailedError(
                    f"model-serving exited with {process.returncode} during start"
                )
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise StageFailedError(f"model-serving not ready after {timeout:.0f}s")
            time.sleep(0.3)
        response = requests.post(f"{url}/v1/score", json=record, timeout=30)
        response.raise_for_status()
        print(f"<== model-serving answered in {time.monotonic() - started:.1f}s", flush=True)
        return {
            "url": url,
            "request": {k: record[k] for k in ("number", "title")},
            "response": response.json(),
        }
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sample_record() -> dict[str, Any]:
    import gzip

    path = PROJECT_ROOT / "data" / "samples" / "pallets__flask.prs.jsonl.gz"
    with gzip.open(path, "rt") as lines:
        return json.loads(next(iter(lines)))


def run_pipeline(platform: LocalPlatform) -> dict[str, Any]:
    platform.up(DEFAULT_SERVICES)
    env = LocalEnvironment(platform)
    env.configure_vault()
    fetch = run_stage(env, "data-fetch", [_bin("data-fetch")])
    preprocess = run_stage(env, "spark-preprocess", [_bin("spark-preprocess")])
    training = run_stage(env, "ml-training", [_bin("ml-training")])
    serving = serve_and_score(env, sample_record(), alias=training["alias"])
    return {
        "data-fetch": fetch,
        "spark-preprocess": preprocess,
        "ml-training": training,
        "model-serving": serving,
    }
