"""The scorer: features -> scaled -> reconstruction error per feature -> score and verdict,
and its file format (``scorer.npz``).

Used by training (threshold, evaluation), the MLflow pyfunc and model-serving's fast path,
so all give the same answer. Inference needs numpy only: the trained autoencoder is kept
as its layers' arrays (:class:`DenseNetwork`), which runs a 13-feature row about 5x faster
than the torch module and keeps torch out of the serving image. DataFrames are scored by
``ml_pipeline.feature_frames.score_frame``, which serving does not use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_contracts.drift import FeatureReference
from pipeline_contracts.features import (
    FEATURE_NAMES,
    FEATURE_SPEC_VERSION,
    FeatureContext,
    FeatureInputs,
    feature_matrix,
)

TOP_FEATURES = 3
SCORER_FILE = "scorer.npz"
SCORER_FORMAT = "dense-autoencoder-npz/1"
LARGEST_ERROR = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class DenseNetwork:
    """A feed-forward network as plain arrays: layer ``i`` computes ``x @ weights[i] + biases[i]``
    (``weights[i]`` is inputs x outputs), then ReLU where ``relu[i]``."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    relu: tuple[bool, ...]

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        x = np.asarray(inputs, dtype=np.float32)
        for weight, bias, relu in zip(self.weights, self.biases, self.relu, strict=True):
            x = x @ weight + bias
            if relu:
                np.maximum(x, 0, out=x)
        return x

    def shape(self) -> list[int]:
        """Units per layer, inputs first (for example [13, 8, 3, 8, 13])."""
        return [self.weights[0].shape[0], *(w.shape[1] for w in self.weights)]


@dataclass(frozen=True)
class Scores:
    """The verdicts of a batch as arrays: each row's score (mean squared reconstruction
    error), whether it is over the threshold, and its ``TOP_FEATURES`` largest errors'
    feature indices, largest first."""

    score: np.ndarray
    is_anomaly: np.ndarray
    top_features: np.ndarray

    def __len__(self) -> int:
        return len(self.score)

    def __getitem__(self, rows: slice) -> Scores:
        return Scores(self.score[rows], self.is_anomaly[rows], self.top_features[rows])


@dataclass
class AnomalyScorer:
    network: DenseNetwork
    mean: np.ndarray
    scale: np.ndarray
    threshold: float
    feature_names: tuple[str, ...] = FEATURE_NAMES
    feature_spec_version: str = FEATURE_SPEC_VERSION
    context: FeatureContext = field(default_factory=FeatureContext)
    # each feature's drift reference: the newest pull requests known at training, per
    # repository (absent in older scorer files)
    reference: dict[str, FeatureReference] = field(default_factory=dict)

    def errors(self, features: np.ndarray) -> np.ndarray:
        """Squared reconstruction error per feature, shape (rows, features), always finite.

        The network computes in float32: a feature beyond its range (about 3.4e38), or one
        whose error is, overflows to infinity or NaN. Such a row is as far from ordinary as
        this model can tell, so its error is float32's largest rather than a NaN that would
        compare as "not anomalous"."""
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = (np.asarray(features, dtype=np.float32) - self.mean) / self.scale
            scaled = scaled.astype(np.float32, copy=False)
            errors = np.square(self.network(scaled) - scaled)
        # NaN and infinity become the largest error (fmin skips NaN; errors are never < 0)
        finite: np.ndarray = np.fmin(errors, LARGEST_ERROR)
        return finite

    def scores(self, features: np.ndarray) -> Scores:
        errors = self.errors(features)
        # float64: the mean of float32-largest errors would overflow a float32 sum
        scores = errors.sum(axis=1, dtype=np.float64) / errors.shape[1]
        top = np.argsort(-errors, axis=1)[:, :TOP_FEATURES]
        return Scores(scores, scores > self.threshold, top)

    def score_features(self, features: np.ndarray) -> list[dict[str, Any]]:
        scores = self.scores(features)
        # whole-array conversions to Python objects, not one numpy scalar at a time
        top_names = np.asarray(self.feature_names, dtype=object)[scores.top_features].tolist()
        return [
            {"score": score, "threshold": self.threshold, "is_anomaly": flag, "top_features": names}
            for score, flag, names in zip(
                scores.score.tolist(), scores.is_anomaly.tolist(), top_names, strict=True
            )
        ]

    def features_of(
        self, inputs: FeatureInputs, repositories: Sequence[object], authors: Sequence[object]
    ) -> np.ndarray:
        """The feature matrix of records given as feature inputs (no pandas): the fast path
        of serving. Context values a record lacks come from the model's snapshot."""
        prior, median = self.context.fill(
            repositories,
            authors,
            inputs.additions + inputs.deletions,
            inputs.author_prior_pull_requests,
            inputs.repository_median_changes,
        )
        return feature_matrix(inputs.with_context(prior, median))

    def score_inputs(
        self, inputs: FeatureInputs, repositories: Sequence[object], authors: Sequence[object]
    ) -> list[dict[str, Any]]:
        return self.score_features(self.features_of(inputs, repositories, authors))

    # -- persistence: one .npz of plain arrays and a JSON header, loadable without pickle --
    def save(self, path: Path) -> None:
        header = {
            "format": SCORER_FORMAT,
            "relu": list(self.network.relu),
            "threshold": self.threshold,
            "feature_names": list(self.feature_names),
            "feature_spec_version": self.feature_spec_version,
            "context": self.context.to_dict(),
            "reference": {name: ref.to_dict() for name, ref in self.reference.items()},
        }
        arrays = {
            "mean": self.mean.astype(np.float32),
            "scale": self.scale.astype(np.float32),
            **{f"weight_{i}": w for i, w in enumerate(self.network.weights)},
            **{f"bias_{i}": b for i, b in enumerate(self.network.biases)},
        }
        with open(path, "wb") as file:  # a file object: np.savez would append ".npz"
            np.savez(file, header=np.array(json.dumps(header)), **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> AnomalyScorer:
        with np.load(path, allow_pickle=False) as saved:
            header = json.loads(str(saved["header"]))
            if header.get("format") != SCORER_FORMAT:
                raise ValueError(
                    f"{path.name} is a {header.get('format')!r} scorer, this code reads "
                    f"{SCORER_FORMAT!r}: retrain or deploy matching code"
                )
            if header["feature_spec_version"] != FEATURE_SPEC_VERSION:
                raise ValueError(
                    f"model was trained on feature spec {header['feature_spec_version']}, this "
                    f"code computes spec {FEATURE_SPEC_VERSION}: retrain or deploy matching code"
                )
            layers = range(len(header["relu"]))
            network = DenseNetwork(
                weights=tuple(saved[f"weight_{i}"] for i in layers),
                biases=tuple(saved[f"bias_{i}"] for i in layers),
                relu=tuple(bool(r) for r in header["relu"]),
            )
            return cls(
                network=network,
                mean=saved["mean"],
                scale=saved["scale"],
                threshold=float(header["threshold"]),
                feature_names=tuple(header["feature_names"]),
                feature_spec_version=header["feature_spec_version"],
                context=FeatureContext.from_dict(header["context"]),
                reference={
                    name: FeatureReference.from_dict(ref)
                    for name, ref in header.get("reference", {}).items()
                },
            )


def find_scorer(model_dir: Path) -> Path:
    """The scorer file inside a downloaded model directory."""
    found = sorted(model_dir.rglob(SCORER_FILE))
    if not found:
        raise FileNotFoundError(
            f"{model_dir} has no {SCORER_FILE}: the model was not logged by this project's "
            "ml-training (or by an older version of it): retrain"
        )
    return found[0]
