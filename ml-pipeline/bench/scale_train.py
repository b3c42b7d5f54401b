"""One point of `make bench-scale`'s training curve: the published feature rows of a Parquet
file of pull requests (``pipeline_ops.synthetic_pulls``), then the autoencoder's epochs over
their training split (ml-training's time split, scaler and ``fit_autoencoder``, default
settings but a fixed number of epochs). Prints one JSON line: rows, seconds per epoch.

The rows are built as spark-preprocess publishes them (every published column, the context
columns as of each pull request), one row group (whole repositories) at a time with the
same pandas code, so the process holds what ml-training holds after loading a feature run.

    python ml-pipeline/bench/scale_train.py --input IN.parquet --epochs 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from ml_pipeline.feature_frames import compute_features, context_columns
from ml_pipeline.training.settings import TrainingSettings
from ml_pipeline.training.steps import check_frame, fit_autoencoder, fit_scaler, time_split
from pipeline_contracts.features import CONTEXT_COLUMNS, FEATURE_NAMES
from pipeline_contracts.pull_requests import FEATURE_INPUT_COLUMNS, KEY_COLUMNS

# spark-preprocess's published columns (ml_pipeline.preprocess.job.PUBLISHED_COLUMNS,
# without importing Spark into a training process)
PUBLISHED = list(
    dict.fromkeys([*KEY_COLUMNS, *FEATURE_INPUT_COLUMNS, *CONTEXT_COLUMNS, *FEATURE_NAMES])
)


def published_rows(source: Path) -> pd.DataFrame:
    parts = []
    parquet = pq.ParquetFile(source)
    for group in range(parquet.num_row_groups):
        rows = parquet.read_row_group(group).to_pandas()
        rows[list(CONTEXT_COLUMNS)] = context_columns(rows)
        rows[list(FEATURE_NAMES)] = compute_features(rows)
        parts.append(rows[PUBLISHED])
    return pd.concat(parts, ignore_index=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    frame = published_rows(args.input)
    check_frame(frame, args.input.name)
    load = time.perf_counter() - started
    train, valid, _ = time_split(frame)
    mean, scale = fit_scaler(train)
    x_train = (train[list(FEATURE_NAMES)].to_numpy() - mean) / scale
    x_valid = (valid[list(FEATURE_NAMES)].to_numpy() - mean) / scale
    settings = TrainingSettings(max_epochs=args.epochs, patience=args.epochs)
    # the first optimizer step of a process imports torch._dynamo (1-2.5 s): not an epoch's cost
    fit_autoencoder(x_train[:1000], x_valid[:1000], settings.model_copy(update={"max_epochs": 1}))
    started = time.perf_counter()
    _, history = fit_autoencoder(x_train, x_valid, settings)
    seconds = time.perf_counter() - started
    result = {
        "rows": len(frame),
        "train_rows": len(x_train),
        "epochs": len(history),
        "seconds": seconds / len(history),
        "load_seconds": load,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
