"""The feature definition: one spec, used by Spark preprocessing, training and serving.

Pure pandas/numpy: Spark applies :func:`compute_features` to each partition
(``mapInPandas``), the model applies it to raw records at scoring time, so training and
serving cannot disagree. Bump ``FEATURE_SPEC_VERSION`` whenever a formula changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

FEATURE_SPEC_VERSION = "1"


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    formula: str
    unit: str


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("log_additions", "ln(1 + additions)", "log lines"),
    FeatureSpec("log_deletions", "ln(1 + deletions)", "log lines"),
    FeatureSpec("log_changed_files", "ln(1 + changed_files)", "log files"),
    FeatureSpec("log_commits", "ln(1 + commits)", "log commits"),
    FeatureSpec(
        "churn_balance",
        "(additions - deletions) / (additions + deletions), 0 when both are 0",
        "ratio in [-1, 1]",
    ),
    FeatureSpec("log_hours_to_merge", "ln(1 + hours from created_at to merged_at)", "log hours"),
    FeatureSpec("log_title_length", "ln(1 + characters in title)", "log characters"),
    FeatureSpec("log_body_length", "ln(1 + characters in body)", "log characters"),
    FeatureSpec("merge_hour_sin", "sin(2 pi hour(merged_at, UTC) / 24)", "unit circle"),
    FeatureSpec("merge_hour_cos", "cos(2 pi hour(merged_at, UTC) / 24)", "unit circle"),
    FeatureSpec("merged_on_weekend", "1 if merged_at falls on Saturday or Sunday (UTC)", "flag"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)

# Columns of a pull-request record that the features read.
INPUT_COLUMNS = (
    "additions",
    "deletions",
    "changed_files",
    "commits",
    "title",
    "body",
    "created_at",
    "merged_at",
)


def feature_spec_document() -> dict:
    return {"version": FEATURE_SPEC_VERSION, "features": [asdict(f) for f in FEATURES]}


def compute_features(records: pd.DataFrame) -> pd.DataFrame:
    """One row of features per record, in ``FEATURE_NAMES`` order (float64)."""
    additions = records["additions"].astype("float64")
    deletions = records["deletions"].astype("float64")
    churn = additions + deletions
    created = pd.to_datetime(records["created_at"], utc=True)
    merged = pd.to_datetime(records["merged_at"], utc=True)
    # An unmerged pull request has no merge time: its merge features are 0.
    hours_to_merge = ((merged - created).dt.total_seconds() / 3600).clip(lower=0).fillna(0)
    merge_hour = merged.dt.hour + merged.dt.minute / 60
    angle = 2 * np.pi * merge_hour / 24
    features = pd.DataFrame(
        {
            "log_additions": np.log1p(additions),
            "log_deletions": np.log1p(deletions),
            "log_changed_files": np.log1p(records["changed_files"].astype("float64")),
            "log_commits": np.log1p(records["commits"].astype("float64")),
            "churn_balance": np.where(
                churn > 0, (additions - deletions) / churn.where(churn > 0, 1), 0.0
            ),
            "log_hours_to_merge": np.log1p(hours_to_merge),
            "log_title_length": np.log1p(records["title"].fillna("").str.len().astype("float64")),
            "log_body_length": np.log1p(records["body"].fillna("").str.len().astype("float64")),
            "merge_hour_sin": np.sin(angle).fillna(0.0),
            "merge_hour_cos": np.cos(angle).fillna(0.0),
            "merged_on_weekend": (merged.dt.dayofweek >= 5).astype("float64"),
        },
        index=records.index,
    )
    return features[list(FEATURE_NAMES)].astype("float64")
