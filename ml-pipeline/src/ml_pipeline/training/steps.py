"""The pure steps of training: check the published frame, split it by time, scale, fit the
autoencoder (and the IsolationForest baseline), evaluate both on the held-out test split with
injected anomalies and the weak labels. No server: tested without MLflow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import IsolationForest

from ml_pipeline.anomalies import inject_anomalies, revert_labels
from ml_pipeline.datasets import DatasetError
from ml_pipeline.evaluation import detection_metrics, threshold_from_validation
from ml_pipeline.feature_frames import feature_context
from ml_pipeline.model import Autoencoder
from ml_pipeline.training.settings import TrainingSettings
from pipeline_contracts.drift import REFERENCE_RECORDS, FeatureReference, reference_distribution
from pipeline_contracts.features import CONTEXT_COLUMNS, FEATURE_NAMES
from pipeline_contracts.pull_requests import REQUIRED_COLUMNS
from pipeline_contracts.scorer import AnomalyScorer

log = logging.getLogger(__name__)

SPLIT = (0.70, 0.15)  # train, validation; the newest rest is the test split
MIN_ROWS = 40
# What training reads from a published feature run: the record's required columns (they
# key the weak labels and the context snapshot), its context columns and features.
FRAME_COLUMNS = (*REQUIRED_COLUMNS, *CONTEXT_COLUMNS, *FEATURE_NAMES)


def check_frame(frame: pd.DataFrame, run_id: str) -> None:
    missing = [c for c in FRAME_COLUMNS if c not in frame.columns]
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


def select_repositories(frame: pd.DataFrame, repositories: tuple[str, ...]) -> pd.DataFrame:
    """``frame``'s rows of ``repositories`` (all of it when none are given)."""
    if not repositories:
        return frame
    present = set(frame["repository"].unique())
    unknown = sorted(set(repositories) - present)
    if unknown:
        raise DatasetError(
            f"TRAINING_REPOSITORIES names {unknown}, which the feature data set does not hold "
            f"(it has {sorted(present)}): fix the setting, or fetch those repositories"
        )
    return frame[frame["repository"].isin(repositories)].reset_index(drop=True)


def time_split(frame, fractions=SPLIT):
    """Oldest pull requests train, newer validate, newest test: no future leaks into fit."""
    ordered = frame.sort_values(["created_at", "repository", "number"], kind="stable")
    n = len(ordered)
    a, b = int(n * fractions[0]), int(n * (fractions[0] + fractions[1]))
    return ordered.iloc[:a], ordered.iloc[a:b], ordered.iloc[b:]


def drift_reference(rows: pd.DataFrame) -> dict[str, FeatureReference]:
    """Each feature's drift reference: the newest :data:`REFERENCE_RECORDS` pull requests of
    each repository in ``rows``, binned by their deciles, with every repository's shares (see
    :mod:`pipeline_contracts.drift`)."""
    ordered = rows.sort_values(["created_at", "repository", "number"], kind="stable")
    newest = ordered.groupby("repository", sort=False).tail(REFERENCE_RECORDS)
    return reference_distribution(
        newest[list(FEATURE_NAMES)].to_numpy(dtype=float),
        FEATURE_NAMES,
        newest["repository"].astype(str).to_numpy(),
    )


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
    with torch_threads(settings.threads):
        return _fit_autoencoder(train, valid, settings)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Torch's intra-op threads for a block. The network is tiny (13-8-2-8-13): splitting
    its matrix products across threads costs more than it saves, and on a busy machine the
    threads' spin-waits cost 75x (7.1 s against 0.095 s an epoch, measured on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_autoencoder(train: np.ndarray, valid: np.ndarray, settings: TrainingSettings):
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
    if best_state is None:  # max_epochs >= 1: the first epoch always improves on infinity
        raise RuntimeError("training ran no epoch")
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
    """The model to register: trained on all but the newest data (the time split), tested on
    the newest."""
    train, valid, test = time_split(frame)
    return fit_and_evaluate(frame, train, valid, test, settings, weak_labels)


def fit_and_evaluate(
    frame: pd.DataFrame,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame,
    settings: TrainingSettings,
    weak_labels: dict[str, set[int]] | None,
) -> Outcome:
    """Fit both models on ``train``, set their thresholds on ``valid``, evaluate them on
    ``test`` with injected anomalies; the scorer's context is that of all of ``frame``."""
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
    context = feature_context(frame)
    # Serving measures drift against the newest pull requests known now, the test split's
    # included: traffic after the model is compared with the traffic just before it.
    reference = drift_reference(pd.concat([train, valid, test]))
    scorer = AnomalyScorer(
        model.dense_network(), mean, scale, threshold=0.0, context=context, reference=reference
    )
    valid_scores = scorer.errors(valid[columns].to_numpy()).mean(axis=1)
    scorer.threshold = threshold_from_validation(valid_scores, settings.threshold_quantile)

    forest = IsolationForest(n_estimators=settings.baseline_trees, random_state=settings.seed).fit(
        scaled(train)
    )
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
