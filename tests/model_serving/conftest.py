"""Fixtures: a small real scorer trained in-process on real sample pull requests, and the
same scorer registered in the real MLflow server as ml-training registers a model."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

import ml_pipeline
from ml_pipeline.features import compute_features
from ml_pipeline.scoring import AnomalyScorer
from ml_pipeline.training.job import fit_autoencoder
from ml_pipeline.training.settings import TrainingSettings
from pipeline_ops.localstack import free_port

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def serving_records(samples_dir: Path) -> list[dict[str, Any]]:
    """200 raw GitHub-shaped pull requests from each sample file."""
    records: list[dict[str, Any]] = []
    for path in sorted(samples_dir.glob("*.prs.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            records += [json.loads(line) for _, line in zip(range(200), lines, strict=False)]
    return records


@pytest.fixture(scope="session")
def scorer(serving_records) -> AnomalyScorer:
    features = compute_features(pd.DataFrame(serving_records)).to_numpy()
    mean, scale = features.mean(axis=0), features.std(axis=0)
    scale[scale == 0] = 1.0
    scaled = (features - mean) / scale
    model, _ = fit_autoencoder(scaled[:300], scaled[300:], TrainingSettings(max_epochs=10))
    scorer = AnomalyScorer(model, mean, scale, threshold=0.0)
    scorer.threshold = float(np.quantile(scorer.errors(features[300:]).mean(axis=1), 0.9))
    return scorer


SERVING_ALIAS = "serving-under-test"  # its own alias: other tests register versions too


@pytest.fixture(scope="session")
def registered_model(local_env, scorer, tmp_path_factory) -> dict[str, str]:
    """The scorer registered in the real MLflow server the way ml-training registers it
    (pyfunc with the scorer artifact), under the model name of the serving Vault secret."""
    import mlflow
    from mlflow import MlflowClient

    from ml_pipeline.training.pyfunc import SCORER_ARTIFACT, PullRequestAnomalyModel

    tracking_uri = local_env.platform.service("mlflow").url
    name = local_env.stage_secrets()["model-serving"]["model_name"]
    scorer_path = tmp_path_factory.mktemp("scorer") / "scorer.pt"
    scorer.save(scorer_path)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("model-serving-tests")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=PullRequestAnomalyModel(),
            artifacts={SCORER_ARTIFACT: str(scorer_path)},
            code_paths=[str(Path(ml_pipeline.__file__).parent)],
            pip_requirements=["torch", "numpy", "pandas", "mlflow-skinny"],
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(name, SERVING_ALIAS, version)
    return {
        "tracking_uri": tracking_uri,
        "name": name,
        "version": version,
        "alias": SERVING_ALIAS,
        "uri": f"models:/{name}@{SERVING_ALIAS}",
    }


class ServingProcess:
    """`model-serving` started as its image starts it: only VAULT_* and SERVING_* settings."""

    def __init__(self, env: dict[str, str], *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [str(BIN / "model-serving"), "--port", str(self.port), *args]
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(self.url + path, timeout=5)
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout: float = 90) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.get("/readyz")
            if response is not None and response.status_code == 200:
                return response
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"model-serving not ready: {self.process.stderr.read()[-3000:]}")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture(scope="session")
def serving_env(local_env, registered_model) -> dict[str, str]:
    """A clean environment for a model-serving process serving the registered model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "SERVING_"))}
    return {
        **env,
        **local_env.stage_env("model-serving"),
        "SERVING_MODEL_ALIAS": registered_model["alias"],
    }


@pytest.fixture(scope="module")
def served(serving_env) -> Iterator[ServingProcess]:
    """One ready model-serving process for a test module."""
    server = ServingProcess(serving_env)
    server.wait_ready()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_server(serving_env) -> Iterator:
    """Start model-serving processes (extra environment, CLI args); all stopped afterwards."""
    started: list[ServingProcess] = []

    def start(*args: str, **env: str) -> ServingProcess:
        server = ServingProcess({**serving_env, **env}, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
