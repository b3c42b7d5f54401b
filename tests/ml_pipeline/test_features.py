"""The feature definition, checked against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ml_pipeline.features import (
    FEATURE_NAMES,
    FEATURE_SPEC_VERSION,
    INPUT_COLUMNS,
    compute_features,
    feature_spec_document,
)


def _records() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                # merged on a Saturday at 16:30 UTC (given as 18:30 at +02:00), 30.5 h open
                "additions": 9,
                "deletions": 1,
                "changed_files": 2,
                "commits": 1,
                "title": "Fix bug",
                "body": "abc",
                "created_at": "2024-01-05T10:00:00Z",
                "merged_at": "2024-01-06T18:30:00+02:00",
            },
            {
                # nothing changed; merged on a Monday at 18:00 UTC after 12 h; no body
                "additions": 0,
                "deletions": 0,
                "changed_files": 0,
                "commits": 0,
                "title": "",
                "body": None,
                "created_at": "2024-01-08T06:00:00Z",
                "merged_at": "2024-01-08T18:00:00Z",
            },
            {
                # never merged: every merge feature is 0
                "additions": 0,
                "deletions": 5,
                "changed_files": 1,
                "commits": 3,
                "title": "WIP",
                "body": "",
                "created_at": "2024-02-01T00:00:00Z",
                "merged_at": None,
            },
        ],
        index=[10, 11, 12],  # Spark hands partitions over with arbitrary indexes
    )


EXPECTED = {
    "log_additions": [math.log(10), 0.0, 0.0],
    "log_deletions": [math.log(2), 0.0, math.log(6)],
    "log_changed_files": [math.log(3), 0.0, math.log(2)],
    "log_commits": [math.log(2), 0.0, math.log(4)],
    "churn_balance": [0.8, 0.0, -1.0],
    "log_hours_to_merge": [math.log(31.5), math.log(13), 0.0],
    "log_title_length": [math.log(8), 0.0, math.log(4)],
    "log_body_length": [math.log(4), 0.0, 0.0],
    "merge_hour_sin": [math.sin(2 * math.pi * 16.5 / 24), -1.0, 0.0],
    "merge_hour_cos": [math.cos(2 * math.pi * 16.5 / 24), 0.0, 0.0],
    "merged_on_weekend": [1.0, 0.0, 0.0],
}


def test_features_match_hand_computed_values() -> None:
    features = compute_features(_records())
    assert list(features.index) == [10, 11, 12]
    for name, expected in EXPECTED.items():
        np.testing.assert_allclose(
            features[name].to_numpy(), expected, rtol=1e-12, atol=1e-12, err_msg=name
        )


def test_output_columns_are_the_spec_in_order_as_float64() -> None:
    features = compute_features(_records())
    assert tuple(features.columns) == FEATURE_NAMES
    assert set(EXPECTED) == set(FEATURE_NAMES)
    assert all(dtype == np.float64 for dtype in features.dtypes)
    assert np.isfinite(features.to_numpy()).all()


def test_features_read_only_the_input_columns() -> None:
    records = _records()
    records["user"] = [{"login": "a"}, None, {"login": "b"}]
    records["state"] = "closed"
    pd.testing.assert_frame_equal(
        compute_features(records), compute_features(records[list(INPUT_COLUMNS)])
    )


def test_a_missing_input_column_fails_loudly() -> None:
    with pytest.raises(KeyError, match="commits"):
        compute_features(_records().drop(columns=["commits"]))


def test_spec_document_lists_every_feature() -> None:
    document = feature_spec_document()
    assert document["version"] == FEATURE_SPEC_VERSION
    assert [f["name"] for f in document["features"]] == list(FEATURE_NAMES)
    for feature in document["features"]:
        assert feature["formula"].strip() and feature["unit"].strip(), feature["name"]
