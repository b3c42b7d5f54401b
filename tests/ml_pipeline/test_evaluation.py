"""Detection metrics and the threshold rule."""

from __future__ import annotations

import numpy as np
import pytest

from ml_pipeline.evaluation import detection_metrics, precision_at_k, threshold_from_validation


def test_perfect_ranking_scores_one_and_a_reversed_one_zero() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    good = detection_metrics(labels, scores, threshold=0.5, k=2)
    assert good == pytest.approx(
        {"roc_auc": 1, "pr_auc": 1, "f1": 1, "precision": 1, "recall": 1, "precision_at_k": 1}
    )
    bad = detection_metrics(labels, -scores, threshold=0.0, k=2)
    assert bad["roc_auc"] == 0
    assert bad["precision_at_k"] == 0
    assert bad["f1"] == 0


def test_f1_uses_the_threshold_and_precision_at_k_the_ranking() -> None:
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.9, 0.8, 0.2, 0.1])
    metrics = detection_metrics(labels, scores, threshold=0.5, k=1)
    assert metrics["precision"] == 0.5
    assert metrics["recall"] == 0.5
    assert metrics["precision_at_k"] == 0
    assert precision_at_k(labels, scores, 2) == 0.5


def test_metrics_need_both_classes() -> None:
    with pytest.raises(ValueError, match="both"):
        detection_metrics(np.zeros(3), np.arange(3.0), 1.0, 1)


def test_threshold_is_the_validation_quantile() -> None:
    valid = np.arange(101.0)
    assert threshold_from_validation(valid, 0.99) == pytest.approx(99.0)
    assert (valid > threshold_from_validation(valid, 0.99)).mean() == pytest.approx(0.01, abs=0.01)
