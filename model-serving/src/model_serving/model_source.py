"""Fetch the registered model from MLflow and load its scorer for the fast path."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ml_pipeline.scoring import AnomalyScorer
from ml_pipeline.training.pyfunc import SCORER_ARTIFACT


@dataclass
class LoadedModel:
    name: str
    version: str
    alias: str
    scorer: AnomalyScorer


def load_registered_model(tracking_uri: str, name: str, alias: str) -> LoadedModel:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    version = MlflowClient().get_model_version_by_alias(name, alias)
    target = Path(tempfile.mkdtemp(prefix="model-"))
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/{name}@{alias}", dst_path=str(target))
    )
    # The pyfunc stores the scorer as an artifact; serving uses it directly (plain torch,
    # no pyfunc/pandas round trip per request).
    scorer_files = list((local / "artifacts").glob("*.pt")) or list(local.rglob("*.pt"))
    if not scorer_files:
        raise FileNotFoundError(f"models:/{name}@{alias} has no {SCORER_ARTIFACT} artifact")
    return LoadedModel(name, str(version.version), alias, AnomalyScorer.load(scorer_files[0]))
