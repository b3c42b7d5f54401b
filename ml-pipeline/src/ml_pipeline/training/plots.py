"""PNG artifacts of an evaluation: ROC and precision-recall curves (autoencoder beside the
IsolationForest baseline) and the histogram of reconstruction errors. Headless (Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ml_pipeline.evaluation import curves

if TYPE_CHECKING:
    from ml_pipeline.training.backtest import Backtest
    from ml_pipeline.training.steps import Evaluation


def write_plots(directory: Path, evaluation: Evaluation) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    labels = evaluation.labels
    roc, pr = plt.subplots(figsize=(5, 5)), plt.subplots(figsize=(5, 5))
    for name, scores in evaluation.scores.items():
        curve = curves(labels, scores)
        auc = evaluation.metrics[name]["roc_auc"]
        ap = evaluation.metrics[name]["pr_auc"]
        roc[1].plot(curve["fpr"], curve["tpr"], label=f"{name} (AUC {auc:.3f})")
        pr[1].plot(curve["recall"], curve["precision"], label=f"{name} (AP {ap:.3f})")
    roc[1].plot([0, 1], [0, 1], "k--", linewidth=0.8)
    roc[1].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test split")
    pr[1].set(xlabel="recall", ylabel="precision", title="Precision-recall, test split")
    paths = []
    for (figure, axes), filename in ((roc, "roc_curve.png"), (pr, "pr_curve.png")):
        axes.legend(loc="lower right" if filename.startswith("roc") else "upper right")
        figure.tight_layout()
        figure.savefig(directory / filename, dpi=100)
        plt.close(figure)
        paths.append(directory / filename)

    figure, axes = plt.subplots(figsize=(6, 4))
    errors = np.log10(evaluation.scores["autoencoder"] + 1e-6)
    bins = np.linspace(errors.min(), errors.max(), 40).tolist()
    axes.hist(errors[labels == 0], bins=bins, alpha=0.6, label="real test pull requests")
    axes.hist(errors[labels == 1], bins=bins, alpha=0.6, label="injected anomalies")
    axes.axvline(np.log10(evaluation.thresholds["autoencoder"] + 1e-6), color="k", ls="--")
    axes.set(xlabel="log10 reconstruction error", ylabel="pull requests", title="Errors")
    axes.legend()
    figure.tight_layout()
    figure.savefig(directory / "error_histogram.png", dpi=100)
    plt.close(figure)
    paths.append(directory / "error_histogram.png")
    return paths


def write_backtest_plot(directory: Path, backtest: Backtest) -> Path:
    """ROC AUC and PR AUC per fold, the autoencoder beside the baseline."""
    directory.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    folds = [f"{f.number}\n{f.first_created}" for f in backtest.folds]
    positions = np.arange(len(folds))
    for axis, metric in zip(axes, ("roc_auc", "pr_auc"), strict=True):
        for offset, model in ((-0.2, "autoencoder"), (0.2, "isolation_forest")):
            values = [f.outcome.evaluation.metrics[model][metric] for f in backtest.folds]
            axis.bar(positions + offset, values, width=0.4, label=model)
        axis.set(xticks=positions, xticklabels=folds, ylim=(0, 1), title=metric.replace("_", " "))
        axis.set_xlabel("fold (test period from)")
    axes[0].legend(loc="lower left")
    figure.suptitle("Rolling-origin backtest on injected anomalies")
    figure.tight_layout()
    path = directory / "backtest.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
