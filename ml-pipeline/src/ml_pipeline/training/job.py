"""TrainingJob: published features -> time split -> autoencoder (+ IsolationForest baseline)
-> evaluation on the held-out test split -> MLflow run -> quality gate -> registry.

The steps (``steps.py``) and the gate (``gate.py``) need no server; this job adds the I/O:
the feature data set, the MLflow run (``tracking.py``) and the registry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from ml_pipeline.anomalies import load_revert_labels
from ml_pipeline.datasets import DatasetError, load_feature_dataset
from ml_pipeline.training.backtest import run_backtest
from ml_pipeline.training.gate import champion_on_the_same_rows, gate_decision, untrustworthy_reason
from ml_pipeline.training.settings import TrainingSecret, TrainingSettings
from ml_pipeline.training.steps import check_frame, select_repositories
from ml_pipeline.training.tracking import (
    StepTimer,
    log_backtest,
    log_gate,
    log_training,
    register_challenger,
)
from pipeline_common.cli import StageError
from pipeline_common.redaction import redact_credentials
from pipeline_contracts.registry import CHALLENGER, CHAMPION

log = logging.getLogger(__name__)


@dataclass
class TrainingJob:
    secret: TrainingSecret
    settings: TrainingSettings
    features_run_id: str | None = None

    def run(self) -> dict[str, Any]:
        timer = StepTimer()
        with timer("load"):
            try:
                dataset = load_feature_dataset(
                    self.secret.features_uri, self.features_run_id, s3=self.secret.s3()
                )
                frame = select_repositories(dataset.frame, self.settings.repository_list)
                dataset = replace(dataset, frame=frame)
                check_frame(dataset.frame, dataset.run_id)
            except DatasetError as error:
                raise StageError(str(error)) from None
            weak_dir = (
                Path(self.settings.weak_labels_dir) if self.settings.weak_labels_dir else None
            )
            weak_labels = load_revert_labels(weak_dir)
        if not weak_labels:
            log.info("no weak labels (*.reverts.json) in %r: injected anomalies only", weak_dir)
        with timer("backtest"):  # its newest fold is the model to register
            backtest = run_backtest(dataset.frame, self.settings, weak_labels)
        outcome = backtest.newest.outcome
        scorer, evaluation = outcome.scorer, outcome.evaluation
        ae, forest = evaluation.metrics["autoencoder"], evaluation.metrics["isolation_forest"]
        log.info(
            "test ROC AUC: autoencoder %.4f, IsolationForest %.4f (%s)",
            ae["roc_auc"],
            forest["roc_auc"],
            "autoencoder ahead"
            if ae["roc_auc"] > forest["roc_auc"]
            else "the autoencoder does NOT beat the baseline",
        )

        mlflow.set_tracking_uri(self.secret.mlflow_tracking_uri)
        mlflow.set_experiment(self.settings.experiment)
        client = MlflowClient()
        name = self.secret.model_name
        with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
            with timer("mlflow_logging"):
                info = log_training(
                    self.settings, dataset, _manifest_hash(dataset.manifest), outcome, Path(tmp)
                )
                log_backtest(backtest, Path(tmp))
            with timer("champion_comparison"):
                champion_version, champion_auc = champion_on_the_same_rows(client, name, evaluation)
            decision = gate_decision(
                ae["roc_auc"],
                self.settings,
                champion_version,
                champion_auc,
                untrustworthy_reason(outcome, self.settings),
            )
            log_gate(decision)
            version = None
            if decision.registered:
                with timer("registration"):
                    version = register_challenger(client, name, info)
                log.info(
                    "gate %s; registered %s version %s as '%s'",
                    decision.reason,
                    name,
                    version,
                    CHALLENGER,
                )
            else:
                log.warning(
                    "gate %s; NOT registered: '%s' and '%s' stay where they were",
                    decision.reason,
                    CHALLENGER,
                    CHAMPION,
                )
            return {
                "stage": "ml-training",
                "mlflow_run_id": run.info.run_id,
                # the summary is printed and stored (make run's state.json): no credentials
                "tracking_uri": redact_credentials(self.secret.mlflow_tracking_uri),
                "model_name": name,
                "model_version": version,
                "alias": CHALLENGER,
                "registered": decision.registered,
                "gate": decision.reason,
                "feature_run_id": dataset.run_id,
                "repositories": sorted(dataset.frame["repository"].unique()),
                "epochs": len(outcome.history),
                "threshold": scorer.threshold,
                "test_roc_auc": ae["roc_auc"],
                "isolation_forest_test_roc_auc": forest["roc_auc"],
                "backtest": backtest.summary(),
                "seconds": timer.seconds,
            }


def _manifest_hash(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
