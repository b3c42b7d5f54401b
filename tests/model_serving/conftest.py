"""A small real scorer, trained in-process on real sample pull requests (no MLflow)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml_pipeline.features import attach_context, compute_features
from ml_pipeline.scoring import AnomalyScorer
from ml_pipeline.training.job import fit_autoencoder
from ml_pipeline.training.settings import TrainingSettings


@pytest.fixture(scope="session")
def serving_records(samples_dir: Path) -> list[dict[str, Any]]:
    """200 raw GitHub-shaped pull requests from each sample file."""
    records: list[dict[str, Any]] = []
    for path in sorted(samples_dir.glob("*.prs.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            records += [json.loads(line) for _, line in zip(range(200), lines, strict=False)]
    return records


@pytest.fixture(scope="session")
def scorer(serving_records) -> AnomalyScorer:
    features = compute_features(attach_context(pd.DataFrame(serving_records), None)).to_numpy()
    mean, scale = features.mean(axis=0), features.std(axis=0)
    scale[scale == 0] = 1.0
    scaled = (features - mean) / scale
    model, _ = fit_autoencoder(scaled[:300], scaled[300:], TrainingSettings(max_epochs=10))
    scorer = AnomalyScorer(model, mean, scale, threshold=0.0)
    scorer.threshold = float(np.quantile(scorer.errors(features[300:]).mean(axis=1), 0.9))
    return scorer
