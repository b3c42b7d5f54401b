"""The evaluation plots, from plain data to a figure, no server: each shows the numbers it is
given where a reader looks for them (line points, titles, the threshold and alert lines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from ml_pipeline.training.plots import (
    ALERT_COLOUR,
    drift_psi_figure,
    fold_metrics_figure,
    per_kind_figure,
    reference_shares_figure,
    save,
    score_distribution_figure,
)
from pipeline_contracts.drift import DRIFT_ALERT_PSI

PERIODS = {1: "2024-01-01\n..2024-06-30", 2: "2024-07-01\n..2024-12-31"}


def _line(axis, label: str) -> list[float]:
    (line,) = [line for line in axis.get_lines() if line.get_label() == label]
    return list(line.get_ydata())


def test_the_score_distribution_says_what_each_threshold_flags() -> None:
    labels = np.array([0] * 10 + [1] * 4)
    autoencoder = np.array([0.1] * 9 + [3.0] + [0.2] + [4.0] * 3)  # 1 of 10, 3 of 4 above 2
    forest = np.array([0.4] * 10 + [0.7] * 4)  # none of the real, all injected above 0.6

    figure = score_distribution_figure(
        labels,
        {"autoencoder": autoencoder, "isolation_forest": forest},
        {"autoencoder": 2.0, "isolation_forest": 0.6},
    )

    left, right = figure.axes
    assert left.get_title() == (
        "autoencoder, threshold 2\nflags 10.0% of the real, 75.0% of the injected"
    )
    assert right.get_title() == (
        "IsolationForest, threshold 0.6\nflags 0.0% of the real, 100.0% of the injected"
    )
    # the threshold line where the scores are drawn: log10 for the autoencoder's error
    (cut,) = [line for line in left.get_lines() if line.get_label() == "threshold"]
    assert cut.get_xdata()[0] == pytest.approx(np.log10(2.0), abs=1e-5)
    # each group as its share per bin, so a handful of anomalies is as visible as the rest
    for axis in figure.axes:
        real, injected = axis.containers
        assert sum(bar.get_height() for bar in real) == pytest.approx(1)
        assert sum(bar.get_height() for bar in injected) == pytest.approx(1)


def test_the_fold_plot_shows_both_models_per_fold() -> None:
    rows = [
        {
            "fold": fold,
            "test_from": f"2024-0{fold}-01",
            "test_to": f"2024-0{fold}-28",
            "autoencoder_roc_auc": 0.99 - fold / 100,
            "isolation_forest_roc_auc": 0.95,
            "autoencoder_pr_auc": 0.9,
            "isolation_forest_pr_auc": 0.7 + fold / 10,
        }
        for fold in (1, 2)
    ]

    roc, pr = fold_metrics_figure(rows).axes

    assert _line(roc, "autoencoder") == pytest.approx([0.98, 0.97])
    assert _line(roc, "IsolationForest") == [0.95, 0.95]
    assert _line(pr, "IsolationForest") == pytest.approx([0.8, 0.9])
    assert [t.get_text() for t in roc.get_xticklabels()] == [
        "1\n2024-01-01\n..2024-01-28",
        "2\n2024-02-01\n..2024-02-28",
    ]
    # every point is labelled with its value, and inside the axis' range
    assert {t.get_text() for t in roc.texts} == {"0.980", "0.970", "0.950"}
    low, high = roc.get_ylim()
    assert low < 0.95
    assert high >= 1.0


def test_the_per_kind_plot_has_a_panel_per_kind_with_both_models() -> None:
    per_kind = {
        fold: {
            "autoencoder": {"huge_dump": 0.99, "mass_deletion": 0.98 + fold / 100},
            "isolation_forest": {"huge_dump": 0.90 - fold / 100, "mass_deletion": 0.97},
        }
        for fold in (1, 2)
    }

    figure = per_kind_figure(per_kind, PERIODS)

    huge, mass = figure.axes
    assert (huge.get_title(), mass.get_title()) == ("huge dump", "mass deletion")
    assert _line(huge, "IsolationForest") == pytest.approx([0.89, 0.88])
    assert _line(mass, "autoencoder") == pytest.approx([0.99, 1.0])
    assert huge.get_ylim()[0] < 0.88  # the lowest point is on the plot, shared by all panels
    assert "fold 2: 2024-07-01..2024-12-31" in figure.get_supxlabel()


def test_the_drift_plot_orders_features_by_the_newest_psi_and_marks_the_alerts() -> None:
    psi = {
        1: {"log_additions": 0.05, "log_commits": 0.9, "churn_balance": 0.1},
        2: {"log_additions": 0.4, "log_commits": 0.02, "churn_balance": 0.3},
    }

    (axis,) = drift_psi_figure(psi, PERIODS).axes

    # bottom-up: the highest PSI of the newest fold is on top
    labels = [t.get_text() for t in axis.get_yticklabels()]
    assert labels == ["log_commits", "churn_balance", "log_additions"]
    newest = {t.get_text(): t.get_color() for t in axis.texts}
    assert newest == {"0.02": "black", "0.30": ALERT_COLOUR, "0.40": ALERT_COLOUR}
    (alert,) = [line for line in axis.get_lines() if "alert" in line.get_label()]
    assert alert.get_xdata()[0] == DRIFT_ALERT_PSI
    assert axis.get_xlim()[1] > 0.9  # the oldest fold's 0.9 fits
    # one bar per fold and feature, the fold's PSI as its length
    bars = {patch.get_width() for container in axis.containers for patch in container}
    assert bars == {v for fold in psi.values() for v in fold.values()}


def test_the_reference_plot_puts_training_and_test_shares_side_by_side(tmp_path: Path) -> None:
    names = [f"feature_{i}" for i in range(5)]
    reference = {name: np.array([0.5, 0.3, 0.2]) for name in names}
    observed = {name: np.array([0.2, 0.3, 0.5]) for name in names}
    psi = {name: 0.1 * i for i, name in enumerate(names)}

    figure = reference_shares_figure(reference, observed, psi)

    shown = [axis for axis in figure.axes if axis.get_visible()]
    assert len(shown) == 5  # a 4-wide grid: the three unused panels are hidden
    titles = {axis.get_title(): axis.title.get_color() for axis in shown}
    assert titles["feature_1\nPSI 0.10"] == "black"
    assert to_rgba(titles["feature_3\nPSI 0.30"]) == to_rgba(ALERT_COLOUR)
    training, test = shown[0].containers
    assert [bar.get_height() for bar in training] == [0.5, 0.3, 0.2]
    assert [bar.get_height() for bar in test] == [0.2, 0.3, 0.5]

    path = save(figure, tmp_path / "drift" / "reference_bins.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_long_feature_name_is_broken_to_fit_its_panel() -> None:
    name = "log_author_prior_pull_requests_capped"
    shares = {name: np.array([0.3, 0.7]), "log_additions": np.array([0.5, 0.5])}

    figure = reference_shares_figure(shares, shares, {name: 0.0, "log_additions": 0.0})

    titles = [axis.get_title() for axis in figure.axes if axis.get_visible()]
    assert titles[0] == "log_author_prior_\npull_requests_capped\nPSI 0.00"
    assert titles[1] == "log_additions\nPSI 0.00"  # a short name as it is
