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
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import IsolationForest

from ml_pipeline.anomalies import load_revert_labels
from ml_pipeline.feature_frames import compute_features, context_columns
from ml_pipeline.training.backtest import METRICS, MODELS, run_backtest
from ml_pipeline.training.settings import TrainingSettings
from ml_pipeline.training.steps import fit_autoencoder, fit_scaler, pick_device, time_split
from pipeline_contracts.features import CONTEXT_COLUMNS, FEATURE_NAMES

SAMPLES = Path(__file__).resolve().parents[4] / "data" / "samples"


def sample_rows(samples: Path = SAMPLES) -> pd.DataFrame:
    """The bundled pull requests as published feature rows."""
    raw: list[dict[str, Any]] = []
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
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    frame = sample_rows()
    weak = load_revert_labels(SAMPLES)
    seconds["load"] = time.perf_counter() - started
    started = time.perf_counter()
    backtest = run_backtest(frame, settings, weak)
    seconds["backtest (all folds, both models)"] = time.perf_counter() - started
    outcome = backtest.newest.outcome
    epochs = len(outcome.history)

    train, valid, _ = time_split(frame)
    mean, scale = fit_scaler(train)
    x_train = (train[list(FEATURE_NAMES)].to_numpy() - mean) / scale
    x_valid = (valid[list(FEATURE_NAMES)].to_numpy() - mean) / scale
    started = time.perf_counter()
    fit_autoencoder(x_train, x_valid, settings)
    seconds["fit: autoencoder, newest fold"] = time.perf_counter() - started
    started = time.perf_counter()
    IsolationForest(n_estimators=settings.baseline_trees, random_state=settings.seed).fit(x_train)
    seconds["fit: IsolationForest, newest fold"] = time.perf_counter() - started
    three_epochs = settings.model_copy(update={"max_epochs": 3, "patience": 3})
    per_epoch = {}
    tiled = np.tile(x_train, (int(np.ceil(100_000 / len(x_train))), 1))[:100_000]
    for threads in sorted({1, torch.get_num_threads()}):
        timed = three_epochs.model_copy(update={"threads": threads})
        started = time.perf_counter()
        fit_autoencoder(tiled, x_valid, timed.model_copy(update={"max_epochs": 1}))
        per_epoch[threads] = time.perf_counter() - started

    sizes = outcome.sizes
    print(f"bench-train: {len(frame)} bundled pull requests, seed {settings.seed}")
    print(
        f"  newest fold (the registered model's split): train {sizes['train']}, valid "
        f"{sizes['valid']}, test {sizes['test']} + {sizes['injected']} injected anomalies; "
        f"{epochs} epochs (max {settings.max_epochs}, patience {settings.patience})"
    )
    print("\n  time split (wall seconds)")
    for name, value in seconds.items():
        print(f"    {name:<38}{value:>8.2f}")
    device = pick_device(settings.device)
    for threads, value in per_epoch.items():
        baseline = per_epoch[1]
        print(
            f"    one epoch over 100,000 rows, {threads} torch thread(s) ({device}): "
            f"{value:.2f} s ({value / baseline:.2f}x the 1-thread figure)"
        )
    print(f"\n  rolling-origin backtest ({len(backtest.folds)} folds, injected anomalies)")
    header = "fold", "test period", "model", *METRICS, "reverted: n, ROC AUC [90%]"
    print(
        "  "
        + f"{header[0]:<6}{header[1]:<24}{header[2]:<18}"
        + "".join(f"{h:>16}" for h in header[3:-1])
        + f"{header[-1]:>30}"
    )
    for fold in backtest.folds:
        period = f"{fold.first_created}..{fold.last_created}"
        for model in MODELS:
            metrics = fold.outcome.evaluation.metrics[model]
            weak_auc = fold.outcome.evaluation.weak.get(f"{model}_revert_roc_auc")
            low, high = fold.weak_intervals.get(model, (float("nan"), float("nan")))
            reverted = int(fold.outcome.evaluation.weak.get("test_reverted_rows", 0))
            weak_text = (
                f"{reverted}, -"
                if weak_auc is None
                else f"{reverted}, {weak_auc:.3f} [{low:.2f},{high:.2f}]"
            )
            print(
                f"  {fold.number:<6}{period:<24}{model:<18}"
                + "".join(f"{metrics[m]:>16.4f}" for m in METRICS)
                + f"{weak_text:>30}"
            )
    summary = backtest.summary()
    print("\n  mean over folds (ratio autoencoder / IsolationForest)")
    for name in METRICS:
        ae = summary[f"autoencoder_{name}_mean"]
        forest = summary[f"isolation_forest_{name}_mean"]
        ratio = ae / forest if forest else float("nan")
        print(f"    {name:<16}{ae:>8.4f}{forest:>10.4f}{ratio:>8.3f}")
    if summary["autoencoder_behind"]:
        for gap in summary["autoencoder_behind"]:
            print(
                f"  the autoencoder does NOT beat the IsolationForest on {gap['metric']} in fold "
                f"{gap['fold']}, by {gap['by']:.4f}"
            )
    else:
        print("  the autoencoder beats the IsolationForest on ROC AUC and PR AUC in every fold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
