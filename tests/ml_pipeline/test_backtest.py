"""The rolling-origin backtest: every period tested once, by models that saw only its past."""

from __future__ import annotations

import pandas as pd
import pytest

from ml_pipeline.training.backtest import Backtest, fold_splits
from ml_pipeline.training.steps import time_split


def _frame(n: int = 200) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "created_at": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")[::-1],
            "repository": "o/r",
            "number": range(n),
        }
    )


@pytest.mark.parametrize("folds", [1, 2, 3, 4])
def test_each_period_is_tested_once_by_models_that_saw_only_its_past(folds: int) -> None:
    frame = _frame()
    splits = fold_splits(frame, folds)
    assert len(splits) == folds
    tested = pd.concat([test for _, _, test in splits])
    assert tested["number"].is_unique
    for train, valid, test in splits:
        assert train["created_at"].max() < valid["created_at"].min()
        assert valid["created_at"].max() < test["created_at"].min()
    newest = splits[-1]
    for part, expected in zip(newest, time_split(frame), strict=True):
        pd.testing.assert_frame_equal(part, expected)


def test_too_many_folds_for_the_data_are_refused() -> None:
    with pytest.raises(ValueError, match="no training rows"):
        fold_splits(_frame(), 6)


def test_the_summary_says_where_and_by_how_much_the_autoencoder_is_behind() -> None:
    class Evaluation:
        def __init__(self, ae: float, forest: float) -> None:
            self.metrics = {
                "autoencoder": {"roc_auc": ae, "pr_auc": ae, "f1": 0.5, "precision_at_k": 0.5},
                "isolation_forest": {
                    "roc_auc": forest,
                    "pr_auc": forest,
                    "f1": 0.5,
                    "precision_at_k": 0.5,
                },
            }

    class Fold:
        def __init__(self, number: int, ae: float, forest: float) -> None:
            self.number = number
            self.outcome = type("Outcome", (), {"evaluation": Evaluation(ae, forest)})()

    summary = Backtest([Fold(1, 0.95, 0.90), Fold(2, 0.90, 0.93)]).summary()  # type: ignore[list-item]
    assert summary["autoencoder_ahead_in_every_fold"] is False
    assert summary["autoencoder_behind"] == [
        {"fold": 2, "metric": "roc_auc", "by": pytest.approx(0.03)},
        {"fold": 2, "metric": "pr_auc", "by": pytest.approx(0.03)},
    ]
    assert summary["autoencoder_roc_auc_mean"] == pytest.approx(0.925)
