"""Shared fixtures: the real local platform, started once per test session.

The servers are the same ones `make up` starts (same launcher), in a temporary state
directory, on free ports, and stopped by pid at the end of the session.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml_pipeline.feature_frames import attach_context, compute_features
from ml_pipeline.training.settings import TrainingSettings
from ml_pipeline.training.steps import fit_autoencoder
from pipeline_contracts.drift import reference_distribution
from pipeline_contracts.features import FEATURE_NAMES
from pipeline_contracts.scorer import AnomalyScorer
from pipeline_ops.local_env import LocalEnvironment
from pipeline_ops.local_platform import LocalPlatform


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlatform]:
    """Vault, MongoDB (FerretDB) and MLflow, running. S3 is started on demand (`s3` fixture)."""
    local = LocalPlatform(tmp_path_factory.mktemp("platform"))
    try:
        local.up(["vault", "mongo", "mlflow"])
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def local_env(
    platform: LocalPlatform, tmp_path_factory: pytest.TempPathFactory
) -> LocalEnvironment:
    """The platform with Vault bootstrapped: policies, jwt roles, stage secrets, tokens."""
    env = LocalEnvironment(platform, tmp_path_factory.mktemp("data"))
    env.configure_vault()
    return env


@pytest.fixture(scope="session")
def s3(platform: LocalPlatform):
    """A real S3-compatible server (SeaweedFS) on loopback."""
    platform.up(["s3"])
    return platform.service("s3")


@pytest.fixture
def stage_env(local_env: LocalEnvironment, monkeypatch: pytest.MonkeyPatch):
    """Set the VAULT_* contract of a stage in this process's environment."""

    def apply(stage: str) -> dict[str, str]:
        env = local_env.stage_env(stage)
        for key in [k for k in os.environ if k.startswith("VAULT_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return env

    return apply


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "samples"


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
    features = compute_features(attach_context(pd.DataFrame(serving_records), None)).to_numpy()
    mean, scale = features.mean(axis=0), features.std(axis=0)
    scale[scale == 0] = 1.0
    scaled = (features - mean) / scale
    model, _ = fit_autoencoder(scaled[:300], scaled[300:], TrainingSettings(max_epochs=10))
    reference = reference_distribution(features, FEATURE_NAMES)
    scorer = AnomalyScorer(model.dense_network(), mean, scale, threshold=0.0, reference=reference)
    scorer.threshold = float(np.quantile(scorer.errors(features[300:]).mean(axis=1), 0.9))
    return scorer


@pytest.fixture(scope="session")
def register_scorer(local_env, scorer, tmp_path_factory) -> Callable[[str], str]:
    """Register ``scorer`` under a model name the way ml-training does (pyfunc with the
    scorer artifact) in the real MLflow server; returns the new version."""

    def register(name: str) -> str:
        import mlflow

        from ml_pipeline.training.pyfunc import log_scorer_model

        mlflow.set_tracking_uri(local_env.platform.service("mlflow").url)
        mlflow.set_experiment("registered-for-tests")
        with mlflow.start_run():
            info = log_scorer_model(scorer, tmp_path_factory.mktemp("scorer"), name)
        return str(info.registered_model_version)

    return register
