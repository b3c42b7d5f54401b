"""Shared fixtures: the real local platform, started once per test session.

The servers are the same ones `make up` starts (same launcher), in a temporary state
directory, on free ports, and stopped by pid at the end of the session.
"""

from __future__ import annotations

import gzip
import json
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml_pipeline.datasets import MANIFEST
from ml_pipeline.feature_frames import attach_context, compute_features, context_columns
from ml_pipeline.preprocess.job import publish_latest
from ml_pipeline.training.settings import TrainingSettings
from ml_pipeline.training.steps import fit_autoencoder
from pipeline_common.storage import S3Config, StorageLocation
from pipeline_contracts.drift import reference_distribution
from pipeline_contracts.features import CONTEXT_COLUMNS, FEATURE_NAMES, FEATURE_SPEC_VERSION
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
def s3_config(s3, platform: LocalPlatform) -> S3Config:
    """The connection to that server, with the platform's keys."""
    credentials = platform.s3_credentials()
    return S3Config(
        endpoint_url=f"http://127.0.0.1:{s3.port}",
        access_key_id=credentials["access_key_id"],
        secret_access_key=credentials["secret_access_key"],
    )


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
def sound_scorer() -> AnomalyScorer:
    """A scorer trained on the bundled sample as ml-training trains one (time split, the
    default settings): it flags 1-2 % of ordinary pull requests, as the pre-promotion
    quality gate expects of a sound version (``scorer`` above, a quick toy, flags far more)."""
    from ml_pipeline.training.bench import sample_rows
    from ml_pipeline.training.settings import TrainingSettings
    from ml_pipeline.training.steps import fit_and_evaluate, time_split

    frame = sample_rows()
    train, valid, test = time_split(frame)
    return fit_and_evaluate(frame, train, valid, test, TrainingSettings(), None).scorer


@pytest.fixture(scope="session")
def register_scorer(local_env, scorer, tmp_path_factory) -> Callable[..., str]:
    """Register ``scorer`` (or another one given) under a model name the way ml-training
    does (pyfunc with the scorer artifact) in the real MLflow server; the new version."""

    def register(name: str, other: AnomalyScorer | None = None) -> str:
        import mlflow

        from ml_pipeline.training.pyfunc import log_scorer_model

        mlflow.set_tracking_uri(local_env.platform.service("mlflow").url)
        mlflow.set_experiment("registered-for-tests")
        with mlflow.start_run():
            info = log_scorer_model(other or scorer, tmp_path_factory.mktemp("scorer"), name)
        return str(info.registered_model_version)

    return register


@pytest.fixture(scope="session")
def read_samples(samples_dir: Path) -> Callable[[int], list[dict[str, Any]]]:
    """The first ``per_file`` raw (GitHub REST-shaped) pull requests of each sample file."""

    def read(per_file: int) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for path in sorted(samples_dir.glob("*.prs.jsonl.gz")):
            with gzip.open(path, "rt", encoding="utf-8") as lines:
                for index, line in enumerate(lines):
                    if index >= per_file:
                        break
                    records.append(json.loads(line))
        return records

    return read


@pytest.fixture(scope="session")
def feature_rows() -> Callable[[list[dict[str, Any]]], pd.DataFrame]:
    return _feature_rows


def _feature_rows(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as spark-preprocess publishes them (keys, inputs, context, features), in pandas."""
    raw = pd.DataFrame(records)
    keys = pd.DataFrame(
        {
            "repository": [r["base"]["repo"]["full_name"] for r in records],
            "number": raw["number"].astype("int64"),
            "author": [r["user"]["login"] for r in records],
            "created_at": pd.to_datetime(raw["created_at"], utc=True),
        }
    )
    frame = pd.concat([raw.drop(columns=["user"]), keys[["repository", "author"]]], axis=1)
    # the context columns as of each pull request: the single-process reference of Spark's
    frame[list(CONTEXT_COLUMNS)] = context_columns(frame)
    context_frame = attach_context(frame, None)
    published = context_frame[
        ["additions", "deletions", "changed_files", "commits", *CONTEXT_COLUMNS]
    ]
    return pd.concat([keys, published, compute_features(context_frame)], axis=1)


@pytest.fixture(scope="session")
def write_feature_run() -> Callable[..., str]:
    """Publish ``frame`` under ``root/run_id`` (Parquet, then manifest, then LATEST)."""

    def write(
        root: Path,
        run_id: str,
        frame: pd.DataFrame,
        *,
        manifest: dict[str, Any] | None = None,
        with_manifest: bool = True,
        publish: bool = True,
    ) -> str:
        run_dir = root / run_id
        (run_dir / "features").mkdir(parents=True)
        frame.to_parquet(run_dir / "features" / "part-0.parquet", index=False)
        if with_manifest:
            document = {
                "run_id": run_id,
                "created_at": datetime.now(UTC).isoformat(),
                "feature_spec_version": FEATURE_SPEC_VERSION,
                "features": list(FEATURE_NAMES),
                "rows": len(frame),
                "data_path": "features",
                "source": "test",
                **(manifest or {}),
            }
            (run_dir / MANIFEST).write_text(json.dumps(document))
        if publish:
            publish_latest(StorageLocation.parse(str(root)), run_id)
        return run_id

    return write


@pytest.fixture(scope="session")
def training_run(
    platform: LocalPlatform,
    read_samples,
    feature_rows,
    write_feature_run,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """One real ml-training run in the session's MLflow: 600 real pull requests published as
    spark-preprocess publishes them (its manifest with the feature statistics), trained for
    5 epochs, registered as version 1 of a model of its own. Shared by the training tests
    and the run report's, so the session trains it once."""
    from ml_pipeline.training.job import TrainingJob
    from ml_pipeline.training.settings import TrainingSecret

    records = read_samples(300)
    frame = feature_rows(records)
    root = tmp_path_factory.mktemp("features")
    numeric = frame[[*CONTEXT_COLUMNS, *FEATURE_NAMES]].astype(float)
    statistics = {  # as spark-preprocess's feature_statistics (population stddev)
        name: {
            "mean": numeric[name].mean(),
            "stddev": numeric[name].std(ddof=0),
            "min": numeric[name].min(),
            "max": numeric[name].max(),
        }
        for name in numeric
    }
    write_feature_run(root, "run-600", frame, manifest={"statistics": statistics})
    secret = TrainingSecret(
        mlflow_tracking_uri=platform.service("mlflow").url,
        features_uri=str(root),
        model_name=f"pr-anomaly-test-{uuid.uuid4().hex[:8]}",
    )
    settings = TrainingSettings(max_epochs=5, experiment=f"test-{uuid.uuid4().hex[:8]}")
    return {
        "records": records,
        "frame": frame,
        "root": root,
        "manifest": root / "run-600" / MANIFEST,
        "secret": secret,
        "settings": settings,
        "result": TrainingJob(secret, settings).run(),
    }
