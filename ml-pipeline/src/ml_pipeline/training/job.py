"""TrainingJob: published features -> time split -> autoencoder (+ IsolationForest baseline)
-> evaluation on the held-out test split -> MLflow run -> quality gate -> registry.

Pure parts (split, fit, evaluate) come first and need no server; ``TrainingJob.run`` adds
the I/O (feature data set, MLflow tracking and registry).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from sklearn.ensemble import IsolationForest

from ml_pipeline.anomalies import inject_anomalies, load_revert_labels, revert_labels
from ml_pipeline.datasets import DatasetError, load_feature_dataset
from ml_pipeline.evaluation import detection_metrics, threshold_from_validation
from ml_pipeline.features import (
    CONTEXT_COLUMNS,
    FEATURE_NAMES,
    FEATURE_SPEC_VERSION,
    FeatureContext,
    feature_spec_document,
)
from ml_pipeline.model import Autoencoder
from ml_pipeline.scoring import AnomalyScorer, find_scorer
from ml_pipeline.training.pyfunc import log_scorer_model
from ml_pipeline.training.settings import TrainingSecret, TrainingSettings
from pipeline_common.cli import StageError

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
SPLIT = (0.70, 0.15)  # train, validation; the newest rest is the test split
MIN_ROWS = 40
REQUIRED_COLUMNS = (
    "repository",
    "number",
    "author",
    "created_at",
    "additions",
    "deletions",
    "changed_files",
    "commits",
    *CONTEXT_COLUMNS,
    *FEATURE_NAMES,
)


# -- pure steps ------------------------------------------------------------------------------
def check_frame(frame: pd.DataFrame, run_id: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"feature run {run_id} lacks columns {missing}: it was not written by this "
            "spark-preprocess version; re-run spark-preprocess"
        )
    if len(frame) < MIN_ROWS:
        raise DatasetError(
            f"feature run {run_id} has {len(frame)} rows, training needs at least {MIN_ROWS}: "
            "fetch more pull requests and re-run spark-preprocess"
        )
    bad = ~np.isfinite(frame[list(FEATURE_NAMES)].to_numpy(dtype=float)).all(axis=1)
    if bad.any():
        raise DatasetError(
            f"feature run {run_id} has {int(bad.sum())} rows with missing or infinite "
            "features: re-run spark-preprocess (it quarantines bad records)"
        )


def time_split(frame, fractions=SPLIT):
    """Oldest pull requests train, newer validate, newest test: no future leaks into fit."""
    ordered = frame.sort_values(["created_at", "repository", "number"], kind="stable")
    n = len(ordered)
    a, b = int(n * fractions[0]), int(n * (fractions[0] + fractions[1]))
    return ordered.iloc[:a], ordered.iloc[a:b], ordered.iloc[b:]


def fit_scaler(train: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the training split only."""
    values = train[list(FEATURE_NAMES)].to_numpy(dtype=float)
    mean, scale = values.mean(axis=0), values.std(axis=0)
    scale[scale == 0] = 1.0  # a constant feature carries no signal; avoid dividing by 0
    return mean, scale


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def fit_autoencoder(train: np.ndarray, valid: np.ndarray, settings: TrainingSettings):
    """Mini-batch Adam on the reconstruction error; early stopping on validation loss; the
    best epoch's weights are kept. Returns the model (on the CPU) and the per-epoch history."""
    device = pick_device(settings.device)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model = Autoencoder(train.shape[1], settings.hidden, settings.bottleneck).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    x_train = torch.from_numpy(train.astype(np.float32)).to(device)
    x_valid = torch.from_numpy(valid.astype(np.float32)).to(device)
    best, best_state, stale, history = float("inf"), None, 0, []
    for epoch in range(settings.max_epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator).to(device)
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
        log.info(
            "epoch %d/%d train_loss %.4f valid_loss %.4f",
            epoch + 1,
            settings.max_epochs,
            history[-1]["train_loss"],
            valid_loss,
        )
        if valid_loss < best - 1e-6:
            best, stale = valid_loss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= settings.patience:
                log.info("early stop: no validation gain for %d epochs", stale)
                break
    model.load_state_dict(best_state)
    model = model.cpu()
    model.eval()
    return model, history


@dataclass
class Evaluation:
    """The held-out test split plus injected anomalies, and both models' results on it."""

    rows: pd.DataFrame  # real test rows (label 0) then injected anomalies (label 1, 'kind')
    labels: np.ndarray
    scores: dict[str, np.ndarray]  # model name -> anomaly score per row
    thresholds: dict[str, float]
    metrics: dict[str, dict[str, float]]
    weak: dict[str, float] = field(default_factory=dict)

    @property
    def features(self) -> np.ndarray:
        return self.rows[list(FEATURE_NAMES)].to_numpy(dtype=float)


@dataclass
class Outcome:
    scorer: AnomalyScorer
    history: list[dict[str, float]]
    evaluation: Evaluation
    sizes: dict[str, int]
    distinct: dict[str, int]  # distinct feature rows per split


def evaluation_rows(test: pd.DataFrame, settings: TrainingSettings) -> pd.DataFrame:
    n = max(10, round(settings.injected_fraction * len(test)))
    injected = inject_anomalies(test, n, settings.seed)
    real = test.assign(kind="real")
    return pd.concat([real, injected], ignore_index=True)


def train_and_evaluate(
    frame: pd.DataFrame, settings: TrainingSettings, weak_labels: dict[str, set[int]] | None
) -> Outcome:
    train, valid, test = time_split(frame)
    columns = list(FEATURE_NAMES)
    mean, scale = fit_scaler(train)

    def scaled(part: pd.DataFrame) -> np.ndarray:
        return (part[columns].to_numpy(dtype=float) - mean) / scale

    log.info(
        "training on %d rows, validating on %d, testing on %d (time split)",
        len(train),
        len(valid),
        len(test),
    )
    model, history = fit_autoencoder(scaled(train), scaled(valid), settings)
    # The context at the snapshot's end is what serving needs for pull requests after it.
    context = FeatureContext.from_records(frame)
    scorer = AnomalyScorer(model.dense_network(), mean, scale, threshold=0.0, context=context)
    valid_scores = scorer.errors(valid[columns].to_numpy()).mean(axis=1)
    scorer.threshold = threshold_from_validation(valid_scores, settings.threshold_quantile)

    forest = IsolationForest(n_estimators=200, random_state=settings.seed).fit(scaled(train))
    forest_threshold = threshold_from_validation(
        -forest.score_samples(scaled(valid)), settings.threshold_quantile
    )

    rows = evaluation_rows(test, settings)
    labels = (rows["kind"] != "real").to_numpy(dtype=int)
    scores = {
        "autoencoder": scorer.errors(rows[columns].to_numpy()).mean(axis=1),
        "isolation_forest": -forest.score_samples(scaled(rows)),
    }
    thresholds = {"autoencoder": scorer.threshold, "isolation_forest": forest_threshold}
    k = int(labels.sum())
    metrics = {
        name: detection_metrics(labels, scores[name], thresholds[name], k) for name in scores
    }
    weak: dict[str, float] = {}
    if weak_labels:
        reverted = revert_labels(test, weak_labels)
        weak["test_reverted_rows"] = float(reverted.sum())
        if 0 < reverted.sum() < len(reverted):
            real = (rows["kind"] == "real").to_numpy()
            for name in scores:
                weak_metrics = detection_metrics(
                    reverted, scores[name][real], thresholds[name], int(reverted.sum())
                )
                weak[f"{name}_revert_roc_auc"] = weak_metrics["roc_auc"]
                weak[f"{name}_revert_pr_auc"] = weak_metrics["pr_auc"]
    evaluation = Evaluation(rows, labels, scores, thresholds, metrics, weak)
    splits = {"train": train, "valid": valid, "test": test}
    sizes = {**{name: len(part) for name, part in splits.items()}, "injected": k}
    distinct = {name: len(part[columns].drop_duplicates()) for name, part in splits.items()}
    return Outcome(scorer, history, evaluation, sizes, distinct)


@dataclass(frozen=True)
class GateDecision:
    registered: bool
    reason: str
    champion_version: str | None = None
    champion_roc_auc: float | None = None


def untrustworthy_reason(outcome: Outcome, settings: TrainingSettings) -> str | None:
    """Why a model cannot be registered whatever its ROC AUC, or None: it was trained or
    evaluated on too few or degenerate rows (its threshold and metrics then mean nothing),
    or its threshold is not sane (one far above the validation errors flags nothing)."""
    least = settings.min_split_rows
    for split in ("train", "valid", "test"):
        rows, distinct = outcome.sizes[split], outcome.distinct[split]
        if rows < least:
            return (
                f"refused: the {split} split has {rows} rows, fewer than "
                f"TRAINING_MIN_SPLIT_ROWS={least}: fetch more pull requests and re-run "
                "spark-preprocess"
            )
        if distinct < least:
            return (
                f"refused: the {split} split has {distinct} distinct feature rows among its "
                f"{rows}, fewer than TRAINING_MIN_SPLIT_ROWS={least}: the data are degenerate "
                "(the same records repeated?); fix the source data"
            )
    threshold = outcome.scorer.threshold
    if not (math.isfinite(threshold) and 0 < threshold <= settings.max_threshold):
        return (
            f"refused: threshold {threshold:.6g} is outside (0, TRAINING_MAX_THRESHOLD="
            f"{settings.max_threshold:g}]: the validation rows are nothing like the training "
            "rows, so the model would flag nothing; check the feature data"
        )
    return None


def gate_decision(
    roc_auc: float,
    settings: TrainingSettings,
    champion_version: str | None = None,
    champion_roc_auc: float | None = None,
    untrustworthy: str | None = None,
) -> GateDecision:
    """Register only if the model is trustworthy (``untrustworthy`` is None, see
    :func:`untrustworthy_reason`), its ROC AUC on the injected anomalies reaches
    ``min_roc_auc`` and is not below the champion's (scored on the same rows) by more than
    ``champion_tolerance``."""
    if untrustworthy is not None:
        return GateDecision(False, untrustworthy, champion_version, champion_roc_auc)
    if roc_auc < settings.min_roc_auc:
        return GateDecision(
            False,
            f"refused: ROC AUC {roc_auc:.4f} on injected anomalies is below the minimum "
            f"{settings.min_roc_auc:.4f}",
            champion_version,
            champion_roc_auc,
        )
    if champion_roc_auc is not None and roc_auc < champion_roc_auc - settings.champion_tolerance:
        return GateDecision(
            False,
            f"refused: ROC AUC {roc_auc:.4f} is worse than champion version {champion_version} "
            f"({champion_roc_auc:.4f}) by more than the tolerance "
            f"{settings.champion_tolerance:.4f}",
            champion_version,
            champion_roc_auc,
        )
    versus = (
        f"; champion version {champion_version} scores {champion_roc_auc:.4f} "
        f"(tolerance {settings.champion_tolerance:.4f})"
        if champion_roc_auc is not None
        else "; no comparable champion"
    )
    return GateDecision(
        True,
        f"passed: ROC AUC {roc_auc:.4f} >= minimum {settings.min_roc_auc:.4f}{versus}",
        champion_version,
        champion_roc_auc,
    )


# -- the job (I/O) ---------------------------------------------------------------------------
@dataclass
class TrainingJob:
    secret: TrainingSecret
    settings: TrainingSettings
    features_run_id: str | None = None

    def run(self) -> dict[str, Any]:
        try:
            dataset = load_feature_dataset(self.secret.features_uri, self.features_run_id)
            check_frame(dataset.frame, dataset.run_id)
        except DatasetError as error:
            raise StageError(str(error)) from None
        weak_dir = Path(self.settings.weak_labels_dir) if self.settings.weak_labels_dir else None
        weak_labels = load_revert_labels(weak_dir)
        if not weak_labels:
            log.info("no weak labels (*.reverts.json) in %r: injected anomalies only", weak_dir)
        outcome = train_and_evaluate(dataset.frame, self.settings, weak_labels)
        scorer, evaluation = outcome.scorer, outcome.evaluation
        ae, forest = evaluation.metrics["autoencoder"], evaluation.metrics["isolation_forest"]
        ae_wins = ae["roc_auc"] > forest["roc_auc"]
        log.info(
            "test ROC AUC: autoencoder %.4f, IsolationForest %.4f (%s)",
            ae["roc_auc"],
            forest["roc_auc"],
            "autoencoder ahead" if ae_wins else "the autoencoder does NOT beat the baseline",
        )

        mlflow.set_tracking_uri(self.secret.mlflow_tracking_uri)
        mlflow.set_experiment(self.settings.experiment)
        client = MlflowClient()
        manifest_hash = _manifest_hash(dataset.manifest)
        with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
            mlflow.set_tags(
                {
                    "feature_run_id": dataset.run_id,
                    "feature_manifest_sha256": manifest_hash,
                    "autoencoder_beats_isolation_forest": str(ae_wins).lower(),
                }
            )
            mlflow.log_params(
                {
                    **self.settings.model_dump(),
                    "n_features": len(scorer.feature_names),
                    "layer_units": scorer.network.shape(),
                    "feature_run_id": dataset.run_id,
                    "feature_manifest_sha256": manifest_hash,
                    "feature_spec_version": FEATURE_SPEC_VERSION,
                    "device": str(pick_device(self.settings.device)),
                    "threshold_rule": f"quantile {self.settings.threshold_quantile} of "
                    "validation reconstruction errors",
                    **{f"rows_{name}": size for name, size in outcome.sizes.items()},
                    **{f"distinct_rows_{name}": n for name, n in outcome.distinct.items()},
                }
            )
            for entry in outcome.history:
                mlflow.log_metrics(
                    {"train_loss": entry["train_loss"], "valid_loss": entry["valid_loss"]},
                    step=entry["epoch"],
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
            self._log_artifacts(Path(tmp), outcome, dataset.manifest)
            info = log_scorer_model(scorer, Path(tmp))
            decision = self._gate(
                client, ae["roc_auc"], evaluation, untrustworthy_reason(outcome, self.settings)
            )
            mlflow.set_tags(
                {"gate_registered": str(decision.registered).lower(), "gate": decision.reason}
            )
            mlflow.log_text(decision.reason, "gate.txt")
            if decision.champion_roc_auc is not None:
                mlflow.log_metric("champion_test_roc_auc", decision.champion_roc_auc)
            version = None
            if decision.registered:
                registered = mlflow.register_model(info.model_uri, self.secret.model_name)
                version = str(registered.version)
                client.set_registered_model_alias(self.secret.model_name, CHALLENGER, version)
                log.info(
                    "gate %s; registered %s version %s as '%s'",
                    decision.reason,
                    self.secret.model_name,
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
                "tracking_uri": self.secret.mlflow_tracking_uri,
                "model_name": self.secret.model_name,
                "model_version": version,
                "alias": CHALLENGER,
                "registered": decision.registered,
                "gate": decision.reason,
                "feature_run_id": dataset.run_id,
                "epochs": len(outcome.history),
                "threshold": scorer.threshold,
                "test_roc_auc": ae["roc_auc"],
                "isolation_forest_test_roc_auc": forest["roc_auc"],
            }

    def _gate(
        self,
        client: MlflowClient,
        roc_auc: float,
        evaluation: Evaluation,
        untrustworthy: str | None,
    ) -> GateDecision:
        version, champion_auc = None, None
        try:
            champion = client.get_model_version_by_alias(self.secret.model_name, CHAMPION)
            version = str(champion.version)
        except mlflow.exceptions.MlflowException:
            log.info("no '%s' for %s yet", CHAMPION, self.secret.model_name)
        if version is not None:
            try:
                champion_scorer = _download_scorer(self.secret.model_name, CHAMPION)
            except (ValueError, FileNotFoundError) as error:  # older spec or format
                log.warning("champion version %s not comparable: %s", version, error)
            else:
                scores = champion_scorer.errors(evaluation.features).mean(axis=1)
                champion_auc = detection_metrics(
                    evaluation.labels, scores, champion_scorer.threshold, 1
                )["roc_auc"]
        return gate_decision(roc_auc, self.settings, version, champion_auc, untrustworthy)

    def _log_artifacts(self, tmp: Path, outcome: Outcome, manifest: dict[str, Any]) -> None:
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
                "rule": f"quantile {self.settings.threshold_quantile} of the validation "
                "split's reconstruction errors (mean squared error over scaled features)",
                "isolation_forest_threshold": evaluation.thresholds["isolation_forest"],
            },
            "threshold.json",
        )
        mlflow.log_dict(
            feature_contributions(scorer, evaluation), "feature_error_contributions.json"
        )
        mlflow.log_dict(
            {"metrics": evaluation.metrics, "weak_labels": evaluation.weak, **outcome.sizes},
            "evaluation.json",
        )
        try:
            from ml_pipeline.training.plots import write_plots
        except ImportError:  # matplotlib missing: metrics are still logged
            log.warning("matplotlib not installed: no PNG plots")
            return
        for path in write_plots(tmp / "plots", evaluation):
            mlflow.log_artifact(str(path), "plots")


def feature_contributions(scorer: AnomalyScorer, evaluation: Evaluation) -> dict[str, Any]:
    """Mean squared reconstruction error per feature, for ordinary test rows and for each
    kind of injected anomaly: which features make a pull request look unusual."""
    errors = scorer.errors(evaluation.features)
    kinds = evaluation.rows["kind"].to_numpy()
    result = {}
    for kind in sorted(set(kinds)):
        mean = errors[kinds == kind].mean(axis=0)
        result[kind] = {
            name: {"mean_error": float(value), "share": float(value / mean.sum())}
            for name, value in zip(scorer.feature_names, mean, strict=True)
        }
    return result


def _download_scorer(name: str, alias: str) -> AnomalyScorer:
    with tempfile.TemporaryDirectory() as target:
        local = Path(
            mlflow.artifacts.download_artifacts(f"models:/{name}@{alias}", dst_path=target)
        )
        return AnomalyScorer.load(find_scorer(local))


def _manifest_hash(manifest: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
