"""Fixtures: a small real scorer trained in-process on real sample pull requests, and the
same scorer registered in the real MLflow server as ml-training registers a model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline_ops.base.processes import free_port

BIN = Path(sys.executable).parent


SERVING_ALIAS = "serving-under-test"  # its own alias: other tests register versions too


@pytest.fixture(scope="session")
def registered_model(local_env, register_scorer) -> dict[str, str]:
    """The scorer registered in the real MLflow server the way ml-training registers it
    (pyfunc with the scorer artifact), under the model name of the serving Vault secret."""
    from mlflow import MlflowClient

    tracking_uri = local_env.platform.service("mlflow").url
    name = local_env.stage_secrets()["model-serving"]["model_name"]
    version = register_scorer(name)
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
        # the probes' own listener, as in the Rollout
        env = {"SERVING_PROBE_PORT": str(free_port()), **env}
        self.probe_port = int(env["SERVING_PROBE_PORT"])
        self.probe_url = f"http://127.0.0.1:{self.probe_port}"
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
