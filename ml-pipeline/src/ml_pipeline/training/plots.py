"""PNG artifacts of an evaluation, headless (Agg). Each ``*_figure`` function turns plain data
into a figure and touches nothing else (tested without servers); ``write_plots`` and
``write_backtest_plots`` save them, one folder per report section:

- ``test_split/``: ROC and precision-recall curves and the score distribution of real and
  injected pull requests with each model's threshold, the autoencoder beside the
  IsolationForest baseline, on the registered model's test split;
- ``backtest/``: ROC AUC and PR AUC per fold, and ROC AUC per anomaly kind per fold;
- ``drift/``: each fold's test period against the reference before it (the newest pull
  requests of each repository, mixed as the period's), per feature: the PSI with the alert
  level, and (the newest fold) the shares per reference bin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ml_pipeline.evaluation import curves
from pipeline_contracts.drift import DRIFT_ALERT_PSI

if TYPE_CHECKING:
    from ml_pipeline.training.backtest import Backtest
    from ml_pipeline.training.steps import Evaluation

DPI = 100  # a 9.4-inch figure is 940 px: the report's width
WIDE = 9.4
MODEL_LABELS = {"autoencoder": "autoencoder", "isolation_forest": "IsolationForest"}
MODEL_COLOURS = {"autoencoder": "tab:blue", "isolation_forest": "tab:orange"}
ALERT_COLOUR = "tab:red"
SCORE_GROUPS = ("real test pull requests", "injected anomalies")  # label 0, label 1


def write_plots(directory: Path, evaluation: Evaluation) -> list[Path]:
    """The registered model's test split: ROC, precision-recall, score distribution."""
    folder = directory / "test_split"
    labels, scores, metrics = evaluation.labels, evaluation.scores, evaluation.metrics
    return [
        save(roc_figure(labels, scores, metrics), folder / "roc_curve.png"),
        save(precision_recall_figure(labels, scores, metrics), folder / "pr_curve.png"),
        save(
            score_distribution_figure(labels, scores, evaluation.thresholds),
            folder / "score_distribution.png",
        ),
    ]


def write_backtest_plots(directory: Path, backtest: Backtest) -> list[Path]:
    """Every fold of the backtest: AUCs per fold and per kind, drift per feature."""
    periods = {f.number: f"{f.first_created}\n..{f.last_created}" for f in backtest.folds}
    newest = backtest.newest
    return [
        save(fold_metrics_figure(backtest.table()), directory / "backtest" / "auc_per_fold.png"),
        save(
            per_kind_figure({f.number: f.per_kind for f in backtest.folds}, periods),
            directory / "backtest" / "auc_per_kind.png",
        ),
        save(
            drift_psi_figure({f.number: f.drift_psi for f in backtest.folds}, periods),
            directory / "drift" / "psi_per_feature.png",
        ),
        save(
            reference_shares_figure(
                newest.reference_shares,
                newest.test_shares,
                newest.drift_psi,
            ),
            directory / "drift" / "reference_bins.png",
        ),
    ]


def save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def roc_figure(
    labels: np.ndarray, scores: Mapping[str, np.ndarray], metrics: Mapping[str, Mapping[str, float]]
) -> Figure:
    figure, axes = plt.subplots(figsize=(4.6, 4.2), layout="constrained")
    for name, values in scores.items():
        curve = curves(labels, values)
        auc = metrics[name]["roc_auc"]
        axes.plot(
            curve["fpr"],
            curve["tpr"],
            color=MODEL_COLOURS.get(name),
            label=f"{_label(name)} (AUC {auc:.3f})",
        )
    axes.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test split")
    axes.legend(loc="lower right")
    return figure


def precision_recall_figure(
    labels: np.ndarray, scores: Mapping[str, np.ndarray], metrics: Mapping[str, Mapping[str, float]]
) -> Figure:
    figure, axes = plt.subplots(figsize=(4.6, 4.2), layout="constrained")
    for name, values in scores.items():
        curve = curves(labels, values)
        ap = metrics[name]["pr_auc"]
        axes.plot(
            curve["recall"],
            curve["precision"],
            color=MODEL_COLOURS.get(name),
            label=f"{_label(name)} (AP {ap:.3f})",
        )
    axes.set(
        xlabel="recall", ylabel="precision", ylim=(0, 1.02), title="Precision-recall, test split"
    )
    axes.legend(loc="lower left")
    return figure


def score_distribution_figure(
    labels: np.ndarray, scores: Mapping[str, np.ndarray], thresholds: Mapping[str, float]
) -> Figure:
    """Per model: the scores of the real test pull requests and of the injected anomalies
    (each group's share per bin, so the few anomalies show), the threshold, and the share
    of each group above it. The autoencoder's error is on a log scale (it spans decades)."""
    figure, axes = plt.subplots(1, len(scores), figsize=(WIDE, 3.9), layout="constrained")
    for axis, (name, values) in zip(np.atleast_1d(axes), scores.items(), strict=True):
        threshold = thresholds[name]
        logged = name == "autoencoder"
        shown = np.log10(values + 1e-6) if logged else values
        cut = np.log10(threshold + 1e-6) if logged else threshold
        bins = np.linspace(min(shown.min(), cut), max(shown.max(), cut), 40)
        flagged = []
        for group, colour in zip(SCORE_GROUPS, ("tab:gray", "tab:red"), strict=True):
            part = shown[labels == SCORE_GROUPS.index(group)]
            weights = np.full(len(part), 1 / max(len(part), 1))
            axis.hist(part, bins=bins, weights=weights, alpha=0.6, color=colour, label=group)
            flagged.append((values[labels == SCORE_GROUPS.index(group)] > threshold).mean())
        axis.axvline(cut, color="k", ls="--", label="threshold")
        axis.set(
            xlabel="log10 reconstruction error" if logged else "anomaly score (-score_samples)",
            ylabel="share of the group",
        )
        axis.set_title(
            f"{_label(name)}, threshold {threshold:.3g}\nflags {flagged[0]:.1%} of the real, "
            f"{flagged[1]:.1%} of the injected",
            fontsize="medium",
        )
    handles, texts = np.atleast_1d(axes)[0].get_legend_handles_labels()
    figure.legend(handles, texts, loc="outside upper right", ncols=3, fontsize="small")
    figure.suptitle("Scores on the test split", x=0.02, ha="left")
    return figure


def fold_metrics_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """ROC AUC and PR AUC per fold, both models (rows as ``Backtest.table()`` gives them)."""
    figure, axes = plt.subplots(1, 2, figsize=(WIDE, 3.8), layout="constrained")
    folds = [row["fold"] for row in rows]
    ticks = [f"{row['fold']}\n{row['test_from']}\n..{row['test_to']}" for row in rows]
    for axis, metric in zip(axes, ("roc_auc", "pr_auc"), strict=True):
        _models_side_by_side(
            axis, folds, {m: [row[f"{m}_{metric}"] for row in rows] for m in MODEL_LABELS}
        )
        axis.set(xticks=folds, xticklabels=ticks, title=metric.replace("_", " ").upper())
        axis.set_xlabel("fold: test period")
        _zoom(axis, [row[f"{model}_{metric}"] for row in rows for model in MODEL_LABELS])
    _legend_above(figure, axes[0])
    figure.suptitle("Rolling-origin backtest on injected anomalies, per fold", x=0.02, ha="left")
    return figure


def per_kind_figure(
    per_kind: Mapping[int, Mapping[str, Mapping[str, float]]], periods: Mapping[int, str]
) -> Figure:
    """ROC AUC of each anomaly kind against the real rows, per fold, both models
    (``per_kind``: fold -> model -> kind -> AUC)."""
    folds = sorted(per_kind)
    kinds = sorted(
        {kind for fold in per_kind.values() for model in fold.values() for kind in model}
    )
    figure, axes = plt.subplots(
        1, len(kinds), figsize=(WIDE, 3.6), sharey=True, layout="constrained", squeeze=False
    )
    for axis, kind in zip(axes[0], kinds, strict=True):
        _models_side_by_side(
            axis, folds, {m: [per_kind[fold][m][kind] for fold in folds] for m in MODEL_LABELS}
        )
        axis.set(xticks=folds, title=kind.replace("_", " "))
        axis.set_xlim(folds[0] - 0.5, folds[-1] + 0.5)
    axes[0][0].set_ylabel("ROC AUC")
    _zoom(
        axes[0][0], [auc for fold in per_kind.values() for m in fold.values() for auc in m.values()]
    )
    _legend_above(figure, axes[0][0])
    figure.suptitle("ROC AUC per anomaly kind, per fold", x=0.02, ha="left")
    figure.supxlabel(
        "    ".join(f"fold {fold}: {_one_line(periods[fold])}" for fold in folds),
        fontsize="small",
    )
    return figure


def drift_psi_figure(
    psi: Mapping[int, Mapping[str, float]],
    periods: Mapping[int, str],
    alert: float = DRIFT_ALERT_PSI,
) -> Figure:
    """PSI of each fold's test period against the reference before it, per feature, the
    alert level drawn; features ordered by the newest fold's PSI, highest first."""
    folds = sorted(psi)
    newest = psi[folds[-1]]
    features = sorted(newest, key=newest.__getitem__)  # barh draws bottom-up
    figure, axis = plt.subplots(figsize=(WIDE, 0.42 * len(features) + 1.4), layout="constrained")
    height = 0.8 / len(folds)
    positions = np.arange(len(features))
    colours = plt.get_cmap("Blues")(np.linspace(0.35, 0.9, len(folds)))
    for index, fold in enumerate(folds):
        values = [psi[fold][name] for name in features]
        label = f"fold {fold}: {_one_line(periods.get(fold, ''))}"
        axis.barh(
            positions + (index - (len(folds) - 1) / 2) * height,
            values,
            height,
            color=colours[index],
            label=label,
        )
    for position, name in zip(positions, features, strict=True):
        value = newest[name]
        axis.annotate(
            f"{value:.2f}",
            (value, position + (len(folds) - 1) / 2 * height),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize="small",
            color=ALERT_COLOUR if value > alert else "black",
        )
    axis.axvline(alert, color=ALERT_COLOUR, ls="--", label=f"alert level {alert}")
    axis.set(
        yticks=positions, yticklabels=features, xlabel="PSI against the reference before the period"
    )
    axis.set_xlim(0, max(max(v.values()) for v in psi.values()) * 1.12 + 0.05)
    axis.legend(loc="lower right", fontsize="small")
    axis.set_title("PSI per feature: each fold's test period against the pull requests before it")
    return figure


def reference_shares_figure(
    reference: Mapping[str, np.ndarray],
    observed: Mapping[str, np.ndarray],
    psi: Mapping[str, float],
    alert: float = DRIFT_ALERT_PSI,
) -> Figure:
    """Per feature: the reference's share of each bin (what serving compares its window
    with) beside the test period's share, titled with the PSI (red above the alert
    level)."""
    names = list(reference)
    columns = 4
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(WIDE, 2.2 * rows + 0.6), layout="constrained", squeeze=False
    )
    for axis, name in zip(axes.flat, names, strict=False):
        bins = np.arange(1, len(reference[name]) + 1)
        axis.bar(bins - 0.2, reference[name], 0.4, color="tab:gray", label="reference")
        axis.bar(bins + 0.2, observed[name], 0.4, color="tab:blue", label="test period")
        value = psi[name]
        axis.set_title(
            f"{_fit_panel(name)}\nPSI {value:.2f}",
            fontsize="small",
            color=ALERT_COLOUR if value > alert else "black",
        )
        axis.set_xticks(bins if len(bins) <= 10 else bins[::2])
        axis.tick_params(labelsize="x-small")
        axis.set_ylim(0, 1.15 * max(reference[name].max(), observed[name].max()))
    for axis in axes.flat[len(names) :]:
        axis.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside upper right", ncols=2, fontsize="small")
    figure.supxlabel(
        "bin of the reference deciles (the reference's shares mixed as the period's repositories)",
        fontsize="small",
    )
    figure.supylabel("share of rows", fontsize="small")
    figure.suptitle(
        "Drift of the newest test period against the pull requests before it, per feature",
        x=0.02,
        ha="left",
    )
    return figure


def _legend_above(figure: Figure, axis: Any) -> None:
    """The models' legend above the panels, clear of the points and their labels."""
    handles, labels = axis.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside upper right", ncols=len(labels), fontsize="small")


def _fit_panel(name: str, width: int = 30) -> str:
    """A feature name that fits a quarter-width panel's title: a long one broken at the
    underscore nearest its middle."""
    if len(name) <= width or "_" not in name:
        return name
    cuts = [i for i, c in enumerate(name) if c == "_"]
    cut = min(cuts, key=lambda i: abs(i - len(name) / 2))
    return f"{name[: cut + 1]}\n{name[cut + 1 :]}"


def _one_line(period: str) -> str:
    return period.replace("\n", "")


def _label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def _models_side_by_side(
    axis: Any, x: Sequence[int], values: Mapping[str, Sequence[float]]
) -> None:
    """One line per model, each point labelled: the higher value above, the lower below."""
    for model, points in values.items():
        axis.plot(x, points, "o-", color=MODEL_COLOURS[model], label=_label(model))
    for index, position in enumerate(x):
        at = {model: points[index] for model, points in values.items()}
        top = max(at, key=at.__getitem__)
        for model, value in at.items():
            axis.annotate(
                f"{value:.3f}",
                (position, value),
                xytext=(0, 6 if model == top else -12),
                textcoords="offset points",
                ha="center",
                fontsize="x-small",
                color=MODEL_COLOURS[model],
            )


def _zoom(axis: Any, values: Sequence[float]) -> None:
    """Near 1 the models differ by hundredths: show the range of the values, up to 1."""
    low = min(values)
    axis.set_ylim(max(0.0, low - 0.25 * (1 - low) - 0.01), 1.0 + 0.15 * (1 - low) + 0.005)
