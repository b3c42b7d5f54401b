"""Fetch the registered model from MLflow and load its scorer for the fast path."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline_contracts.registry import ModelReference, download_scorer
from pipeline_contracts.scorer import AnomalyScorer


@dataclass
class LoadedModel:
    name: str
    version: str
    uri: str  # as configured: an alias or a version
    scorer: AnomalyScorer


def load_model(tracking_uri: str, reference: ModelReference) -> LoadedModel:
    """Resolve ``reference`` to a concrete version, download it, load the plain scorer."""
    version, scorer = download_scorer(tracking_uri, reference)
    return LoadedModel(reference.name, version, reference.uri, scorer)
