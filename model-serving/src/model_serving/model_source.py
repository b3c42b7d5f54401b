"""Fetch the registered model from MLflow and load its scorer for the fast path."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ml_pipeline.scoring import AnomalyScorer, find_scorer

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


@dataclass
class LoadedModel:
    name: str
    version: str
    uri: str
    scorer: AnomalyScorer


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` -> (name, alias, None); ``models:/name/3`` -> (name, None, "3")."""
    match = _MODEL_URI.match(uri)
    if not match:
        raise ValueError(
            f"{uri!r} is not a registry model URI: use models:/<name>@<alias> "
            "or models:/<name>/<version>"
        )
    return match["name"], match["alias"], match["version"]


def load_registered_model(tracking_uri: str, name: str, alias: str) -> LoadedModel:
    return load_model_uri(tracking_uri, f"models:/{name}@{alias}")


def load_model_uri(tracking_uri: str, model_uri: str) -> LoadedModel:
    """Resolve ``model_uri`` to a concrete version, download it, load the plain scorer."""
    import mlflow
    from mlflow import MlflowClient

    name, alias, version = parse_model_uri(model_uri)
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    resolved = (
        client.get_model_version_by_alias(name, alias)
        if alias
        else client.get_model_version(name, version)
    )
    # Download the resolved version, not the alias: the alias may move during the download.
    target = Path(tempfile.mkdtemp(prefix="model-"))
    local = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{name}/{resolved.version}", dst_path=str(target)
        )
    )
    # The pyfunc stores the scorer as an artifact; serving uses it directly (numpy arrays,
    # no pyfunc/pandas round trip per request).
    scorer = AnomalyScorer.load(find_scorer(local))
    return LoadedModel(name, str(resolved.version), model_uri, scorer)
