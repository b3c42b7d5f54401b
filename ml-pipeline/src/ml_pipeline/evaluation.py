"""Detection metrics for anomaly scores (higher score = more anomalous), and the threshold rule.

Threshold rule (stored with the model): the ``quantile`` (default 0.99) of the reconstruction
errors of the *validation* split, i.e. of ordinary pull requests the model did not train on;
about 1 % of ordinary pull requests are then flagged. Test data never influences it.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)


def threshold_from_validation(valid_scores: np.ndarray, quantile: float) -> float:
    return float(np.quantile(np.asarray(valid_scores, dtype=float), quantile))


def precision_at_k(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of true anomalies among the ``k`` highest scores (ties broken by order)."""
    k = min(int(k), len(scores))
    if k <= 0:
        return float("nan")
    top = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return float(np.asarray(labels)[top].mean())


def detection_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float, k: int
) -> dict[str, float]:
    """ROC AUC, PR AUC (average precision), precision/recall/F1 at ``threshold``,
    precision at ``k``. Needs both classes present."""
    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=float)
    if labels.min() == labels.max():
        raise ValueError("detection metrics need both anomalous and ordinary rows")
    predicted = (scores > threshold).astype(int)
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "pr_auc": float(average_precision_score(labels, scores)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "recall": float(recall_score(labels, predicted, zero_division=0)),
        "precision_at_k": precision_at_k(labels, scores, k),
    }


def curves(labels: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    return {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall}
