"""ml-training against a real MLflow server: the run is tracked, the model registered as
'challenger', training is reproducible, and the registered pyfunc and the serving fast
path give the same scores."""

from __future__ import annotations

import uuid
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from ml_pipeline.features import FEATURE_NAMES
from ml_pipeline.training.job import CHALLENGER, TrainingJob
from ml_pipeline.training.settings import TrainingSecret, TrainingSettings
from model_serving.model_source import load_registered_model

PER_FILE = 300  # 600 real pull requests


@pytest.fixture(scope="module")
def records(read_samples) -> list[dict[str, Any]]:
    return read_samples(PER_FILE)


@pytest.fixture(scope="module")
def trained(platform, records, feature_rows, write_feature_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    write_feature_run(root, "run-600", feature_rows(records))
    secret = TrainingSecret(
        mlflow_tracking_uri=platform.service("mlflow").url,
        features_uri=str(root),
        model_name=f"pr-anomaly-test-{uuid.uuid4().hex[:8]}",
    )
    settings = TrainingSettings(max_epochs=5, experiment=f"test-{uuid.uuid4().hex[:8]}")
    first = TrainingJob(secret, settings).run()
    second = TrainingJob(secret, settings).run()
    return {"secret": secret, "settings": settings, "first": first, "second": second}


@pytest.fixture(scope="module")
def client(trained) -> MlflowClient:
    return MlflowClient(tracking_uri=trained["secret"].mlflow_tracking_uri)


def test_run_is_tracked_with_params_and_per_epoch_metrics(trained, client) -> None:
    result = trained["first"]
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["max_epochs"] == "5"
    assert params["seed"] == str(trained["settings"].seed)
    assert params["feature_run_id"] == "run-600"
    assert sum(int(params[f"rows_{s}"]) for s in ("train", "valid", "test")) == 2 * PER_FILE
    assert 1 <= result["epochs"] <= 5
    for metric in ("train_loss", "valid_loss"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == list(range(result["epochs"])), metric
        assert all(np.isfinite(m.value) and m.value >= 0 for m in history)
    assert run.data.metrics["threshold"] == pytest.approx(result["threshold"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"feature_spec.json", "input_manifest.json"} <= artifacts


def test_each_run_registers_a_version_and_moves_challenger(trained, client) -> None:
    name = trained["secret"].model_name
    first, second = trained["first"], trained["second"]
    assert first["alias"] == second["alias"] == CHALLENGER
    assert (first["model_version"], second["model_version"]) == ("1", "2")
    assert client.get_model_version_by_alias(name, CHALLENGER).version == "2"
    assert client.get_model_version(name, "1").run_id == first["mlflow_run_id"]


def test_same_data_and_seed_give_the_same_model(trained) -> None:
    first, second = trained["first"], trained["second"]
    assert first["mlflow_run_id"] != second["mlflow_run_id"]
    assert first["threshold"] > 0
    assert first["threshold"] == second["threshold"]
    assert first["epochs"] == second["epochs"]


def test_pyfunc_and_serving_fast_path_score_alike(trained, records) -> None:
    secret, result = trained["secret"], trained["second"]
    raw = pd.DataFrame(records[::10])  # GitHub-shaped: nested user/base, labels, ...
    mlflow.set_tracking_uri(secret.mlflow_tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{secret.model_name}@{CHALLENGER}")
    predicted = pyfunc.predict(raw)

    loaded = load_registered_model(secret.mlflow_tracking_uri, secret.model_name, CHALLENGER)
    assert loaded.version == result["model_version"]
    assert loaded.scorer.threshold == pytest.approx(result["threshold"])
    fast = pd.DataFrame(loaded.scorer.score_records(raw))

    assert len(predicted) == len(fast) == len(raw)
    np.testing.assert_allclose(predicted["score"], fast["score"], rtol=1e-6)
    assert list(predicted["is_anomaly"]) == list(fast["is_anomaly"])
    assert list(predicted["top_features"].map(list)) == list(fast["top_features"])
    assert all(set(top) <= set(FEATURE_NAMES) for top in fast["top_features"])
