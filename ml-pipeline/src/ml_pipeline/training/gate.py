"""The quality gate: which trained model becomes the challenger, and why (or why not).

A model is refused when it cannot be trusted whatever its scores (too few or degenerate
rows, an insane threshold), when its ROC AUC on the injected anomalies is below the minimum,
or when it is worse than the champion, scored on the same rows, by more than the tolerance.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient

from ml_pipeline.evaluation import detection_metrics
from ml_pipeline.training.settings import TrainingSettings
from ml_pipeline.training.steps import Evaluation, Outcome
from pipeline_contracts.registry import CHAMPION, ModelReference, download_scorer

log = logging.getLogger(__name__)


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


def champion_on_the_same_rows(
    client: MlflowClient, model_name: str, evaluation: Evaluation
) -> tuple[str | None, float | None]:
    """The champion's version and its ROC AUC on this evaluation's rows: (None, None) when
    there is no champion, (version, None) when it is not comparable (older spec or format)."""
    try:
        version = str(client.get_model_version_by_alias(model_name, CHAMPION).version)
    except mlflow.exceptions.MlflowException:
        log.info("no '%s' for %s yet", CHAMPION, model_name)
        return None, None
    try:
        _, champion = download_scorer(None, ModelReference.at_version(model_name, version))
    except (ValueError, FileNotFoundError) as error:
        log.warning("champion version %s not comparable: %s", version, error)
        return version, None
    scores = champion.errors(evaluation.features).mean(axis=1)
    return version, detection_metrics(evaluation.labels, scores, champion.threshold, 1)["roc_auc"]
