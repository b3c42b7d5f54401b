"""What a training run records in MLflow: tags, parameters, per-epoch and test metrics, the
artifacts a reviewer reads (feature spec, input manifest, scaler, threshold, evaluation,
per-feature error contributions, plots), the model, the gate's verdict, the registration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.models.model import ModelInfo

from ml_pipeline.datasets import FeatureDataset
from ml_pipeline.training.backtest import Backtest
from ml_pipeline.training.gate import GateDecision
from ml_pipeline.training.pyfunc import log_scorer_model
from ml_pipeline.training.settings import TrainingSettings
from ml_pipeline.training.steps import Outcome, feature_contributions, pick_device
from pipeline_contracts.drift import DRIFT_ALERT_PSI
from pipeline_contracts.features import FEATURE_SPEC_VERSION, feature_spec_document
from pipeline_contracts.registry import CHALLENGER

log = logging.getLogger(__name__)


class StepTimer:
    """Wall seconds per named step of a run (``with timer("fit"): ...``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)


def log_training(
    settings: TrainingSettings,
    dataset: FeatureDataset,
    manifest_hash: str,
    outcome: Outcome,
    tmp: Path,
) -> ModelInfo:
    """Everything about the fitted models, into the active run; returns the logged model."""
    scorer, evaluation = outcome.scorer, outcome.evaluation
    ae, forest = evaluation.metrics["autoencoder"], evaluation.metrics["isolation_forest"]
    mlflow.set_tags(
        {
            "feature_run_id": dataset.run_id,
            "feature_manifest_sha256": manifest_hash,
            "autoencoder_beats_isolation_forest": str(ae["roc_auc"] > forest["roc_auc"]).lower(),
        }
    )
    mlflow.log_params(
        {
            **settings.model_dump(),
            "n_features": len(scorer.feature_names),
            "layer_units": scorer.network.shape(),
            "feature_run_id": dataset.run_id,
            "feature_manifest_sha256": manifest_hash,
            "feature_spec_version": FEATURE_SPEC_VERSION,
            "device": str(pick_device(settings.device)),
            "threshold_rule": f"quantile {settings.threshold_quantile} of "
            "validation reconstruction errors",
            **{f"rows_{name}": size for name, size in outcome.sizes.items()},
            **{f"distinct_rows_{name}": n for name, n in outcome.distinct.items()},
        }
    )
    for entry in outcome.history:
        mlflow.log_metrics(
            {"train_loss": entry["train_loss"], "valid_loss": entry["valid_loss"]},
            step=int(entry["epoch"]),
        )
    mlflow.log_metrics(
        {
            "threshold": scorer.threshold,
            "isolation_forest_threshold": evaluation.thresholds["isolation_forest"],
            **{f"test_{k}": v for k, v in ae.items()},
            **{f"isolation_forest_test_{k}": v for k, v in forest.items()},
            **{f"weak_{k}": v for k, v in evaluation.weak.items()},
        }
    )
    _log_artifacts(settings, tmp, outcome, dataset.manifest)
    return log_scorer_model(scorer, tmp)


def log_backtest(backtest: Backtest, tmp: Path) -> None:
    """The rolling-origin backtest: its table (a fold per row, both models), per-kind AUCs,
    per-repository false-positive rates and per-feature drift, each fold's figures as
    metrics, its plots."""
    mlflow.log_dict(
        {
            "summary": backtest.summary(),
            "folds": backtest.table(),
            "per_kind_roc_auc": {f.number: f.per_kind for f in backtest.folds},
            "false_positive_rate_by_repository": {
                f.number: f.false_positive_rates for f in backtest.folds
            },
            "drift_psi": {f.number: f.drift_psi for f in backtest.folds},
            "drift_alert_psi": DRIFT_ALERT_PSI,
        },
        "backtest.json",
    )
    for fold in backtest.folds:
        for model, metrics in fold.outcome.evaluation.metrics.items():
            mlflow.log_metrics(
                {f"backtest_{model}_{k}": v for k, v in metrics.items()}, step=fold.number
            )
    try:
        from ml_pipeline.training.plots import write_backtest_plots
    except ImportError:
        return
    _log_plots(write_backtest_plots(tmp / "plots", backtest), tmp / "plots")


def log_gate(decision: GateDecision) -> None:
    mlflow.set_tags({"gate_registered": str(decision.registered).lower(), "gate": decision.reason})
    mlflow.log_text(decision.reason, "gate.txt")
    if decision.champion_roc_auc is not None:
        mlflow.log_metric("champion_test_roc_auc", decision.champion_roc_auc)


def register_challenger(client: MlflowClient, model_name: str, info: ModelInfo) -> str:
    """Register the logged model and point ``challenger`` at it; returns its version."""
    version = str(mlflow.register_model(info.model_uri, model_name).version)
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    return version


def _log_artifacts(
    settings: TrainingSettings, tmp: Path, outcome: Outcome, manifest: dict[str, Any]
) -> None:
    scorer, evaluation = outcome.scorer, outcome.evaluation
    mlflow.log_dict(feature_spec_document(), "feature_spec.json")
    mlflow.log_dict(manifest, "input_manifest.json")
    mlflow.log_dict(
        {
            "features": list(scorer.feature_names),
            "mean": scorer.mean.tolist(),
            "scale": scorer.scale.tolist(),
            "fit_on": "train split only",
        },
        "scaler.json",
    )
    mlflow.log_dict(
        {
            "threshold": scorer.threshold,
            "rule": f"quantile {settings.threshold_quantile} of the validation "
            "split's reconstruction errors (mean squared error over scaled features)",
            "isolation_forest_threshold": evaluation.thresholds["isolation_forest"],
        },
        "threshold.json",
    )
    mlflow.log_dict(feature_contributions(scorer, evaluation), "feature_error_contributions.json")
    mlflow.log_dict(
        {"metrics": evaluation.metrics, "weak_labels": evaluation.weak, **outcome.sizes},
        "evaluation.json",
    )
    try:
        from ml_pipeline.training.plots import write_plots
    except ImportError:  # matplotlib missing: metrics are still logged
        log.warning("matplotlib not installed: no PNG plots")
        return
    _log_plots(write_plots(tmp / "plots", evaluation), tmp / "plots")


def _log_plots(paths: list[Path], root: Path) -> None:
    """Each PNG under ``plots/<its folder>``: the report shows a folder as one section."""
    for path in paths:
        mlflow.log_artifact(str(path), str(Path("plots") / path.parent.relative_to(root)))
