"""`make bench-train`: training speed and test metrics on the bundled sample, the autoencoder
beside the IsolationForest baseline (same features, same time split, same injected anomalies).

No server is needed: the bundled pull requests become published-shaped rows in pandas (the
context columns as spark-preprocess defines them), then the pure training steps run with the
default settings (``TRAINING_*`` variables apply). Per-100,000-row speed is measured on the
sample's training split tiled to 100,000 rows (one epoch).
"""

from __future__ import annotations

import gzip
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest

from ml_pipeline.anomalies import load_revert_labels
from ml_pipeline.feature_frames import compute_features, context_columns
from ml_pipeline.training.settings import TrainingSettings
from ml_pipeline.training.steps import (
    fit_autoencoder,
    fit_scaler,
    pick_device,
    time_split,
    train_and_evaluate,
)
from pipeline_contracts.features import CONTEXT_COLUMNS, FEATURE_NAMES

SAMPLES = Path(__file__).resolve().parents[4] / "data" / "samples"


def sample_rows(samples: Path = SAMPLES) -> pd.DataFrame:
    """The bundled pull requests as published feature rows."""
    raw = []
    for path in sorted(samples.glob("*.prs.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            raw.extend(json.loads(line) for line in lines)
    frame = pd.DataFrame(
        {
            "repository": [r["base"]["repo"]["full_name"] for r in raw],
            "number": [int(r["number"]) for r in raw],
            "author": [(r.get("user") or {}).get("login") or "" for r in raw],
            "created_at": pd.to_datetime([r["created_at"] for r in raw], utc=True),
            "merged_at": pd.to_datetime([r.get("merged_at") for r in raw], utc=True),
            **{
                c: [int(r.get(c) or 0) for r in raw]
                for c in ("additions", "deletions", "changed_files", "commits")
            },
            "title": [r.get("title") or "" for r in raw],
            "body": [r.get("body") or "" for r in raw],
        }
    )
    frame[list(CONTEXT_COLUMNS)] = context_columns(frame)
    features = compute_features(frame)
    return pd.concat([frame.drop(columns=["title", "body"]), features], axis=1)


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    settings = TrainingSettings()
    frame = sample_rows()
    started = time.perf_counter()
    outcome = train_and_evaluate(frame, settings, load_revert_labels(SAMPLES))
    total = time.perf_counter() - started
    epochs = len(outcome.history)

    train, valid, _ = time_split(frame)
    mean, scale = fit_scaler(train)
    x_train = (train[list(FEATURE_NAMES)].to_numpy() - mean) / scale
    x_valid = (valid[list(FEATURE_NAMES)].to_numpy() - mean) / scale
    tiled = np.tile(x_train, (int(np.ceil(100_000 / len(x_train))), 1))[:100_000]
    three_epochs = settings.model_copy(update={"max_epochs": 3, "patience": 3})
    started = time.perf_counter()
    fit_autoencoder(x_train, x_valid, three_epochs)
    per_epoch = (time.perf_counter() - started) / 3
    started = time.perf_counter()
    fit_autoencoder(tiled, x_valid, three_epochs.model_copy(update={"max_epochs": 1}))
    per_100k = time.perf_counter() - started
    started = time.perf_counter()
    IsolationForest(n_estimators=200, random_state=settings.seed).fit(x_train)
    forest_fit = time.perf_counter() - started

    sizes = outcome.sizes
    print(f"bench-train: {len(frame)} bundled pull requests, seed {settings.seed}")
    print(
        f"  split (by time): train {sizes['train']}, valid {sizes['valid']}, "
        f"test {sizes['test']} + {sizes['injected']} injected anomalies"
    )
    print(
        f"  autoencoder: {epochs} epochs run (max {settings.max_epochs}, patience "
        f"{settings.patience}); train + baseline + evaluation {total:.1f} s"
    )
    device = pick_device(settings.device)
    print(f"  time per epoch on the {len(x_train)} training rows: {per_epoch:.2f} s ({device})")
    print(f"  one epoch over 100,000 rows: {per_100k:.2f} s (batch {settings.batch_size})")
    print(f"  IsolationForest fit (200 trees) on the training rows: {forest_fit:.2f} s")
    print(f"  threshold (q{settings.threshold_quantile} of validation errors): ", end="")
    print(f"{outcome.scorer.threshold:.4f}")
    metrics = outcome.evaluation.metrics
    names = ("roc_auc", "pr_auc", "f1", "precision", "recall", "precision_at_k")
    print(f"\n  {'test split':<18}" + "".join(f"{n:>15}" for n in names))
    for model, values in metrics.items():
        print(f"  {model:<18}" + "".join(f"{values[n]:>15.4f}" for n in names))
    ratios = {
        n: metrics["autoencoder"][n] / metrics["isolation_forest"][n]
        for n in names
        if metrics["isolation_forest"][n] > 0
    }
    print(
        f"  {'ratio AE / IF':<18}" + "".join(f"{ratios.get(n, float('nan')):>15.3f}" for n in names)
    )
    behind = [n for n, r in ratios.items() if r < 1]
    if behind:
        print(f"  the autoencoder does NOT beat the IsolationForest on: {', '.join(behind)}")
    weak = outcome.evaluation.weak
    if weak:
        print("  weak labels (reverted pull requests in the test split):")
        print("    " + ", ".join(f"{k} {v:.4f}" for k, v in weak.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
