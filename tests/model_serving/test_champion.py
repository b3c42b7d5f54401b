"""`model-champion`: the alias the training gate compares with follows what production
serves, after a promotion and after a rollback, against a real MLflow and a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from model_serving.champion import PROG
from pipeline_contracts.registry import CHAMPION

BIN = Path(sys.executable).parent
MODEL = "champion-under-test"  # its own name: other tests move pr-anomaly's aliases


def _follow(serving_env: dict[str, str], url: str) -> subprocess.CompletedProcess[str]:
    """The job as its CronJob runs it: model-serving's Vault settings and the Service URL."""
    env = {**serving_env, "CHAMPION_SERVING_URL": url}
    return subprocess.run([str(BIN / PROG)], env=env, capture_output=True, text=True, timeout=120)


def _champion(tracking_uri: str) -> str:
    return str(MlflowClient(tracking_uri).get_model_version_by_alias(MODEL, CHAMPION).version)


def test_champion_follows_production_forward_and_back(
    registered_model, register_scorer, start_server, serving_env
) -> None:
    tracking_uri = registered_model["tracking_uri"]
    older, newer = register_scorer(MODEL), register_scorer(MODEL)

    production = start_server(SERVING_MODEL_URI=f"models:/{MODEL}/{newer}")
    production.wait_ready()
    moved = _follow(serving_env, production.url)
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout) == {
        "served_model": f"models:/{MODEL}/{newer}", "champion_before": None,
        "champion": newer, "moved": True,
    }  # fmt: skip
    assert _champion(tracking_uri) == newer

    again = _follow(serving_env, production.url)
    assert json.loads(again.stdout)["moved"] is False
    production.stop()

    # a rollback: production serves the older version again, and champion goes with it
    rolled_back = start_server(SERVING_MODEL_URI=f"models:/{MODEL}/{older}")
    rolled_back.wait_ready()
    back = _follow(serving_env, rolled_back.url)
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["champion_before"] == newer
    assert _champion(tracking_uri) == older


def test_unreachable_production_leaves_champion_alone(registered_model, serving_env) -> None:
    tracking_uri = registered_model["tracking_uri"]
    client = MlflowClient(tracking_uri)
    name = registered_model["name"]
    before = {alias for alias in client.get_registered_model(name).aliases}

    failed = _follow(serving_env, "http://127.0.0.1:9")  # nothing listens on the discard port

    assert failed.returncode == 1
    assert "cannot read what production serves from http://127.0.0.1:9/version" in failed.stderr
    assert "champion left as it is" in failed.stderr
    assert {alias for alias in client.get_registered_model(name).aliases} == before
