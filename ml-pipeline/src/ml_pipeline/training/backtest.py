"""A rolling-origin backtest: how the models do over time, not on one split.

The rows are ordered by creation time. Fold ``j`` of ``F`` tests the 15 % of the rows that
end at ``1 - 0.15 (F - j)`` of the timeline, validates on the 15 % before them, and trains
on everything older: each period is tested once, and always by models that saw only its
past. The newest fold is the registered model's own split (train 70 %, valid 15 %, test
15 %), so its figures are the gate's.

Per fold, for the autoencoder and the IsolationForest baseline side by side: the detection
metrics on injected anomalies (overall and per kind), on the real weak labels (reverted pull
requests) where the fold has any, with a bootstrap interval because they are few, and the
false-positive rate per repository at each model's threshold. And the drift of the fold's
test period, per feature, measured as serving measures it (:mod:`pipeline_contracts.drift`)
against the reference a model deployed at the period's start would carry: the newest pull
requests of each repository before it, mixed in the period's proportions of repositories.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ml_pipeline.anomalies import revert_labels
from ml_pipeline.training.settings import TrainingSettings
from ml_pipeline.training.steps import SPLIT, Outcome, drift_reference, fit_and_evaluate
from pipeline_contracts.drift import bin_counts, population_stability_index

log = logging.getLogger(__name__)

MODELS = ("autoencoder", "isolation_forest")
METRICS = ("roc_auc", "pr_auc", "f1", "precision_at_k")
BOOTSTRAP_SAMPLES = 200


@dataclass
class Fold:
    number: int
    first_created: str
    last_created: str
    outcome: Outcome
    per_kind: dict[str, dict[str, float]]  # model -> kind -> ROC AUC against the real rows
    false_positive_rates: dict[str, dict[str, float]]  # model -> repository -> share flagged
    weak_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    # the test period against the reference before it: feature -> PSI, and the shares per
    # bin of each side (the reference's mixed in the test period's repositories)
    drift_psi: dict[str, float] = field(default_factory=dict)
    test_shares: dict[str, np.ndarray] = field(default_factory=dict)
    reference_shares: dict[str, np.ndarray] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The fold as one flat table row (both models)."""
        sizes = self.outcome.sizes
        row: dict[str, Any] = {
            "fold": self.number,
            "test_from": self.first_created,
            "test_to": self.last_created,
            "train_rows": sizes["train"],
            "test_rows": sizes["test"],
            "injected": sizes["injected"],
            "reverted_in_test": int(self.outcome.evaluation.weak.get("test_reverted_rows", 0)),
        }
        for model in MODELS:
            metrics = self.outcome.evaluation.metrics[model]
            row.update({f"{model}_{name}": metrics[name] for name in METRICS})
            weak = self.outcome.evaluation.weak
            if f"{model}_revert_roc_auc" in weak:
                low, high = self.weak_intervals.get(model, (float("nan"), float("nan")))
                row[f"{model}_revert_roc_auc"] = weak[f"{model}_revert_roc_auc"]
                row[f"{model}_revert_roc_auc_90"] = [low, high]
        return row


@dataclass
class Backtest:
    folds: list[Fold]

    @property
    def newest(self) -> Fold:
        return self.folds[-1]

    def table(self) -> list[dict[str, Any]]:
        return [fold.row() for fold in self.folds]

    def summary(self) -> dict[str, Any]:
        """Mean and worst fold per model and metric, and where the autoencoder does not beat
        the baseline (by how much, per fold)."""
        out: dict[str, Any] = {"folds": len(self.folds)}
        for model in MODELS:
            for name in METRICS:
                values = [f.outcome.evaluation.metrics[model][name] for f in self.folds]
                out[f"{model}_{name}_mean"] = float(np.mean(values))
                out[f"{model}_{name}_min"] = float(np.min(values))
        behind = []
        for fold in self.folds:
            metrics = fold.outcome.evaluation.metrics
            for name in ("roc_auc", "pr_auc"):
                gap = metrics["autoencoder"][name] - metrics["isolation_forest"][name]
                if gap < 0:
                    behind.append({"fold": fold.number, "metric": name, "by": -gap})
        out["autoencoder_behind"] = behind
        out["autoencoder_ahead_in_every_fold"] = not behind
        return out


def fold_splits(
    frame: pd.DataFrame, folds: int
) -> list[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
    """(train, valid, test) of each fold, oldest first (see the module's docstring)."""
    ordered = frame.sort_values(["created_at", "repository", "number"], kind="stable")
    n = len(ordered)
    window = 1 - SPLIT[0] - SPLIT[1]  # the test share; valid is SPLIT[1]
    splits = []
    for back in range(folds - 1, -1, -1):
        end = 1 - window * back
        start = end - window
        valid_start = start - SPLIT[1]
        if valid_start <= 0:
            raise ValueError(f"{folds} folds leave no training rows: use fewer")
        a, b, c = int(n * valid_start), int(n * start), int(n * end)
        splits.append((ordered.iloc[:a], ordered.iloc[a:b], ordered.iloc[b:c]))
    return splits


def run_backtest(
    frame: pd.DataFrame, settings: TrainingSettings, weak_labels: dict[str, set[int]] | None
) -> Backtest:
    folds = []
    for number, (train, valid, test) in enumerate(
        fold_splits(frame, settings.backtest_folds), start=1
    ):
        log.info("backtest fold %d: train %d, test %d", number, len(train), len(test))
        outcome = fit_and_evaluate(frame, train, valid, test, settings, weak_labels)
        before = pd.concat([train, valid])
        folds.append(_fold(number, before, test, outcome, weak_labels, settings.seed))
    return Backtest(folds)


def _fold(
    number: int,
    before: pd.DataFrame,
    test: pd.DataFrame,
    outcome: Outcome,
    weak_labels: dict[str, set[int]] | None,
    seed: int,
) -> Fold:
    evaluation = outcome.evaluation
    kinds = evaluation.rows["kind"].to_numpy()
    real = kinds == "real"
    repositories = evaluation.rows["repository"].to_numpy()
    per_kind: dict[str, dict[str, float]] = {}
    rates: dict[str, dict[str, float]] = {}
    intervals: dict[str, tuple[float, float]] = {}
    reverted = revert_labels(test, weak_labels) if weak_labels else None
    for model in MODELS:
        scores = evaluation.scores[model]
        per_kind[model] = {
            kind: float(
                roc_auc_score(
                    np.r_[np.zeros(real.sum()), np.ones((kinds == kind).sum())],
                    np.r_[scores[real], scores[kinds == kind]],
                )
            )
            for kind in sorted(set(kinds) - {"real"})
        }
        flagged = scores > evaluation.thresholds[model]
        rates[model] = {
            str(repository): float(flagged[real & (repositories == repository)].mean())
            for repository in sorted(set(repositories[real]))
        }
        if reverted is not None and 0 < reverted.sum() < len(reverted):
            intervals[model] = bootstrap_roc_auc(reverted, scores[real], seed)
    references = drift_reference(before)
    mix = test["repository"].astype(str).value_counts().to_dict()
    expected = {name: ref.expected_shares(mix) for name, ref in references.items()}
    counts = {
        name: bin_counts(reference.edges, test[name].to_numpy(dtype=float))
        for name, reference in references.items()
    }
    created = pd.to_datetime(test["created_at"], utc=True)
    return Fold(
        number,
        f"{created.min():%Y-%m-%d}",
        f"{created.max():%Y-%m-%d}",
        outcome,
        per_kind,
        rates,
        intervals,
        drift_psi={
            name: population_stability_index(expected[name], count)
            for name, count in counts.items()
        },
        test_shares={name: count / count.sum() for name, count in counts.items()},
        reference_shares=expected,
    )


def bootstrap_roc_auc(labels: np.ndarray, scores: np.ndarray, seed: int) -> tuple[float, float]:
    """A 90 % percentile interval of the ROC AUC, resampling rows with replacement (few
    positives: the point estimate alone says little)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(BOOTSTRAP_SAMPLES):
        pick = rng.integers(0, len(labels), len(labels))
        if labels[pick].min() != labels[pick].max():
            values.append(roc_auc_score(labels[pick], scores[pick]))
    if not values:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [0.05, 0.95])
    return float(low), float(high)
