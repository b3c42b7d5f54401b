"""Scoring: features -> scaled -> reconstruction error per feature -> score and verdict.

Used by the MLflow pyfunc and by model-serving's fast path, so both give the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ml_pipeline.features import (
    FEATURE_NAMES,
    FEATURE_SPEC_VERSION,
    FeatureContext,
    FeatureInputs,
    attach_context,
    compute_features,
    feature_matrix,
)
from ml_pipeline.model import Autoencoder

TOP_FEATURES = 3


@dataclass
class AnomalyScorer:
    model: Autoencoder
    mean: np.ndarray
    scale: np.ndarray
    threshold: float
    feature_names: tuple[str, ...] = FEATURE_NAMES
    feature_spec_version: str = FEATURE_SPEC_VERSION
    context: FeatureContext = field(default_factory=FeatureContext)

    def errors(self, features: np.ndarray) -> np.ndarray:
        """Squared reconstruction error per feature, shape (rows, features)."""
        scaled = (np.asarray(features, dtype=np.float32) - self.mean) / self.scale
        with torch.inference_mode():
            tensor = torch.from_numpy(scaled.astype(np.float32))
            reconstructed = self.model(tensor).numpy()
        return (reconstructed - scaled) ** 2

    def score_features(self, features: np.ndarray) -> list[dict[str, Any]]:
        errors = self.errors(features)
        scores = errors.mean(axis=1)
        top = np.argsort(-errors, axis=1)[:, :TOP_FEATURES]
        # whole-array conversions to Python objects, not one numpy scalar at a time
        names = np.asarray(self.feature_names, dtype=object)[top].tolist()
        flags = (scores > self.threshold).tolist()
        return [
            {"score": score, "threshold": self.threshold, "is_anomaly": flag, "top_features": top}
            for score, flag, top in zip(scores.tolist(), flags, names, strict=True)
        ]

    def score_inputs(
        self, inputs: FeatureInputs, repositories: Sequence[object], authors: Sequence[object]
    ) -> list[dict[str, Any]]:
        """Score records given as feature inputs (no pandas): the fast path of serving.
        Context values a record lacks come from the model's snapshot."""
        prior, median = self.context.fill(
            repositories,
            authors,
            inputs.additions + inputs.deletions,
            inputs.author_prior_pull_requests,
            inputs.repository_median_changes,
        )
        filled = replace(inputs, author_prior_pull_requests=prior, repository_median_changes=median)
        return self.score_features(feature_matrix(filled))

    def score_records(
        self, records: Sequence[dict[str, Any]] | pd.DataFrame
    ) -> list[dict[str, Any]]:
        frame = records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
        return self.score_features(compute_features(attach_context(frame, self.context)).to_numpy())

    # -- persistence: plain tensors and numbers, loadable without pickle -----------------
    def save(self, path: Path) -> None:
        torch.save(
            {
                "model_config": self.model.config(),
                "state_dict": self.model.state_dict(),
                "mean": torch.from_numpy(self.mean.astype(np.float32)),
                "scale": torch.from_numpy(self.scale.astype(np.float32)),
                "threshold": self.threshold,
                "feature_names": list(self.feature_names),
                "feature_spec_version": self.feature_spec_version,
                "context": self.context.to_dict(),
            },
            path,
        )

    @classmethod
    def load(cls, path: Path) -> AnomalyScorer:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["feature_spec_version"] != FEATURE_SPEC_VERSION:
            raise ValueError(
                f"model was trained on feature spec {saved['feature_spec_version']}, this code "
                f"computes spec {FEATURE_SPEC_VERSION}: retrain or deploy matching code"
            )
        model = Autoencoder(**saved["model_config"])
        model.load_state_dict(saved["state_dict"])
        model.eval()
        return cls(
            model=model,
            mean=saved["mean"].numpy(),
            scale=saved["scale"].numpy(),
            threshold=float(saved["threshold"]),
            feature_names=tuple(saved["feature_names"]),
            feature_spec_version=saved["feature_spec_version"],
            context=FeatureContext.from_dict(saved["context"]),
        )
