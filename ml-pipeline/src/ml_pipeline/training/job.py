"""TrainingJob: published features -> time split -> autoencoder -> MLflow run and model."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient

from ml_pipeline.datasets import load_feature_dataset
from ml_pipeline.features import (
    FEATURE_NAMES,
    FEATURE_SPEC_VERSION,
    FeatureContext,
    feature_spec_document,
)
from ml_pipeline.model import Autoencoder
from ml_pipeline.scoring import AnomalyScorer
from ml_pipeline.training.pyfunc import SCORER_ARTIFACT, PullRequestAnomalyModel
from ml_pipeline.training.settings import TrainingSecret, TrainingSettings

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
SPLIT = (0.70, 0.15)  # train, validation; the newest rest is the test split


def time_split(frame, fractions=SPLIT):
    """Oldest pull requests train, newer validate, newest test: no future leaks into fit."""
    ordered = frame.sort_values(["created_at", "repository", "number"], kind="stable")
    n = len(ordered)
    a, b = int(n * fractions[0]), int(n * (fractions[0] + fractions[1]))
    return ordered.iloc[:a], ordered.iloc[a:b], ordered.iloc[b:]


def fit_autoencoder(train: np.ndarray, valid: np.ndarray, settings: TrainingSettings):
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model = Autoencoder(train.shape[1])
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    x_train = torch.from_numpy(train.astype(np.float32))
    x_valid = torch.from_numpy(valid.astype(np.float32))
    best, best_state, stale, history = float("inf"), None, 0, []
    for epoch in range(settings.max_epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        train_loss = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = x_train[order[start : start + settings.batch_size]]
            optimiser.zero_grad()
            loss = torch.mean((model(batch) - batch) ** 2)
            loss.backward()
            optimiser.step()
            train_loss += loss.item() * len(batch)
        model.eval()
        with torch.inference_mode():
            valid_loss = torch.mean((model(x_valid) - x_valid) ** 2).item()
        history.append(
            {"epoch": epoch, "train_loss": train_loss / len(x_train), "valid_loss": valid_loss}
        )
        if valid_loss < best - 1e-6:
            best, stale = valid_loss, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= settings.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, history


@dataclass
class TrainingJob:
    secret: TrainingSecret
    settings: TrainingSettings
    features_run_id: str | None = None

    def run(self) -> dict[str, Any]:
        dataset = load_feature_dataset(self.secret.features_uri, self.features_run_id)
        train, valid, test = time_split(dataset.frame)
        columns = list(FEATURE_NAMES)
        mean = train[columns].to_numpy().mean(axis=0)
        scale = train[columns].to_numpy().std(axis=0)
        scale[scale == 0] = 1.0  # a constant feature carries no signal; avoid dividing by 0

        def scaled(part):
            return (part[columns].to_numpy() - mean) / scale

        model, history = fit_autoencoder(scaled(train), scaled(valid), self.settings)
        # The context at the snapshot's end is what serving needs for pull requests after it.
        context = FeatureContext.from_records(dataset.frame)
        scorer = AnomalyScorer(model, mean, scale, threshold=0.0, context=context)
        valid_scores = scorer.errors(valid[columns].to_numpy()).mean(axis=1)
        scorer.threshold = float(np.quantile(valid_scores, self.settings.threshold_quantile))
        test_scores = scorer.errors(test[columns].to_numpy()).mean(axis=1)

        mlflow.set_tracking_uri(self.secret.mlflow_tracking_uri)
        mlflow.set_experiment(self.settings.experiment)
        with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
            mlflow.log_params(
                {
                    **self.settings.model_dump(),
                    **model.config(),
                    "feature_run_id": dataset.run_id,
                    "feature_spec_version": FEATURE_SPEC_VERSION,
                    "rows_train": len(train),
                    "rows_valid": len(valid),
                    "rows_test": len(test),
                }
            )
            for entry in history:
                mlflow.log_metrics(
                    {"train_loss": entry["train_loss"], "valid_loss": entry["valid_loss"]},
                    step=entry["epoch"],
                )
            mlflow.log_metrics(
                {
                    "threshold": scorer.threshold,
                    "test_mean_error": float(test_scores.mean()),
                    "test_flagged_rate": float((test_scores > scorer.threshold).mean()),
                }
            )
            mlflow.log_dict(feature_spec_document(), "feature_spec.json")
            mlflow.log_dict(dataset.manifest, "input_manifest.json")
            scorer_path = Path(tmp) / "scorer.pt"
            scorer.save(scorer_path)
            package_dir = Path(__file__).resolve().parents[1]
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=PullRequestAnomalyModel(),
                artifacts={SCORER_ARTIFACT: str(scorer_path)},
                code_paths=[str(package_dir)],
                pip_requirements=_pip_requirements(),
                registered_model_name=self.secret.model_name,
            )
            version = info.registered_model_version
            MlflowClient().set_registered_model_alias(self.secret.model_name, CHALLENGER, version)
            log.info(
                "registered model", extra={"model": self.secret.model_name, "version": version}
            )
            return {
                "stage": "ml-training",
                "mlflow_run_id": run.info.run_id,
                "tracking_uri": self.secret.mlflow_tracking_uri,
                "model_name": self.secret.model_name,
                "model_version": version,
                "alias": CHALLENGER,
                "feature_run_id": dataset.run_id,
                "epochs": len(history),
                "threshold": scorer.threshold,
            }


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "numpy", "pandas", "mlflow-skinny")]
