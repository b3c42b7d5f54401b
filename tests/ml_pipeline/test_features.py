"""The feature definition, checked against values worked out by hand."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pandas as pd
import pytest

from ml_pipeline.feature_frames import (
    attach_context,
    compute_features,
    context_columns,
    feature_context,
    feature_problems,
    input_problems,
)
from pipeline_contracts.features import (
    CONTEXT_COLUMNS,
    FEATURE_NAMES,
    FEATURE_SPEC_VERSION,
    FeatureContext,
    feature_spec_document,
)
from pipeline_contracts.pull_requests import FEATURE_INPUT_COLUMNS


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
                "author_prior_pull_requests": 250,  # counted up to 3
                "repository_median_changes": 99,
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
                "author_prior_pull_requests": 0,
                "repository_median_changes": 0,
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
                "author_prior_pull_requests": 0,
                "repository_median_changes": 5,
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
    "log_author_prior_pull_requests_capped": [math.log(4), 0.0, 0.0],
    "size_vs_repository": [math.log(11) - math.log(100), 0.0, 0.0],
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
        compute_features(records),
        compute_features(records[[*FEATURE_INPUT_COLUMNS, *CONTEXT_COLUMNS]]),
    )


def test_a_missing_input_column_fails_loudly() -> None:
    with pytest.raises(KeyError, match="commits"):
        compute_features(_records().drop(columns=["commits"]))


def test_spec_document_lists_every_feature() -> None:
    document = feature_spec_document()
    assert document["version"] == FEATURE_SPEC_VERSION
    assert [f["name"] for f in document["features"]] == list(FEATURE_NAMES)
    for feature in document["features"]:
        assert feature["formula"].strip(), feature["name"]
        assert feature["unit"].strip(), feature["name"]


def _raw(repository: str, author: str, additions: int, deletions: int) -> dict:
    return {
        "repository": repository,
        "author": author,
        "additions": additions,
        "deletions": deletions,
    }


def test_context_from_a_snapshot_counts_authors_and_takes_repository_medians() -> None:
    snapshot = pd.DataFrame(
        [
            _raw("o/a", "ann", 10, 0),
            _raw("o/a", "ann", 20, 10),
            _raw("o/a", "bob", 1, 1),
            _raw("o/b", "ann", 4, 4),
        ]
    )
    context = feature_context(snapshot)
    assert context.repository_median_changes == {"o/a": 10.0, "o/b": 8.0}
    assert context.author_pull_requests == {"o/a": {"ann": 2, "bob": 1}, "o/b": {"ann": 1}}
    assert FeatureContext.from_dict(context.to_dict()) == context


def test_attach_context_fills_only_what_the_record_lacks() -> None:
    context = FeatureContext({"o/a": 10.0}, {"o/a": {"ann": 2}})
    records = pd.DataFrame(
        [_raw("o/a", "ann", 5, 5), _raw("o/a", "new", 5, 5), _raw("o/new", "ann", 7, 0)]
    )
    records["author_prior_pull_requests"] = [None, None, 9]
    filled = attach_context(records, context)
    assert filled["author_prior_pull_requests"].tolist() == [2.0, 0.0, 9.0]
    # an unknown repository is its own typical size: size_vs_repository is 0, not a guess
    assert filled["repository_median_changes"].tolist() == [10.0, 10.0, 7.0]
    assert "repository_median_changes" not in records  # the caller's frame is untouched


def _pull_request(number: int, author: str, created_at: str, **overrides) -> dict:
    record = {
        "repository": "o/a",
        "number": number,
        "author": author,
        "created_at": created_at,
        "merged_at": None,
        "additions": 1,
        "deletions": 1,
        "changed_files": 1,
        "commits": 1,
    }
    return {**record, **overrides}


def test_input_problems_name_the_first_broken_rule() -> None:
    records = pd.DataFrame(
        [
            _pull_request(1, "ann", "2024-01-01T00:00:00Z"),
            _pull_request(2, "ann", "2024-01-01T00:00:00Z", commits=None),
            _pull_request(3, "ann", "2024-01-01T00:00:00Z", additions=-4),
            _pull_request(4, "ann", "2024-01-02T00:00:00Z", merged_at="2024-01-01T23:00:00Z"),
            _pull_request(5, None, "2024-01-01T00:00:00Z", deletions=-1),
            _pull_request(6, "ann", None),
        ]
    )
    assert input_problems(records).tolist() == [
        None,
        "missing commits",
        "negative additions",
        "merged_at before created_at",
        "missing author",  # the first rule wins
        "missing created_at",
    ]


def test_feature_problems_flag_non_finite_values() -> None:
    features = compute_features(_records())
    features.loc[11, "log_commits"] = np.inf
    features.loc[12, "churn_balance"] = np.nan
    assert feature_problems(features).tolist() == [
        None,
        "non-finite log_commits",
        "non-finite churn_balance",
    ]


def test_context_columns_count_only_earlier_pull_requests() -> None:
    """No look-ahead: #9 was opened first although its number is higher; ties on created_at
    are ordered by number; another author or repository does not count."""
    records = pd.DataFrame(
        [
            _pull_request(10, "ann", "2024-03-01T00:00:00Z", additions=30, deletions=0),
            _pull_request(9, "ann", "2024-01-01T00:00:00Z", additions=1, deletions=1),
            _pull_request(12, "ann", "2024-03-01T00:00:00Z", additions=5, deletions=5),
            _pull_request(11, "bob", "2024-02-01T00:00:00Z", additions=0, deletions=4),
            _pull_request(13, "ann", "2024-01-01T00:00:00Z", repository="o/b"),
        ],
        index=[5, 6, 7, 8, 9],
    )
    context = context_columns(records)
    assert list(context.index) == [5, 6, 7, 8, 9]
    assert context["author_prior_pull_requests"].tolist() == [1.0, 0.0, 2.0, 0.0, 0.0]
    # o/a in creation order: #9 (2), #11 (4), #10 (30), #12 (10); each sees the earlier ones'
    # median, the first its own size; o/b's only pull request: its own size
    assert context["repository_median_changes"].tolist() == [3.0, 2.0, 4.0, 2.0, 2.0]


def test_time_features_follow_the_utc_calendar_on_the_bundled_sample(samples_dir) -> None:
    """The spec computes merge hour and weekday with epoch arithmetic; pandas' calendar is
    the oracle, over every real pull request and the same moments shifted to other zones."""
    records = []
    for path in sorted(samples_dir.glob("*.prs.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            records += [json.loads(line) for line in lines]
    frame = pd.DataFrame(records)
    frame["author_prior_pull_requests"] = 0
    frame["repository_median_changes"] = 0
    merged = pd.to_datetime(frame["merged_at"], utc=True)
    assert merged.notna().sum() > 1000
    shifted = frame.assign(
        merged_at=merged.dt.tz_convert("Asia/Kolkata").map(
            lambda t: t.isoformat(), na_action="ignore"
        )
    )
    angle = 2 * np.pi * (merged.dt.hour + merged.dt.minute / 60) / 24
    hours = (merged - pd.to_datetime(frame["created_at"], utc=True)).dt.total_seconds() / 3600
    for features in (compute_features(frame), compute_features(shifted)):
        np.testing.assert_allclose(features["merge_hour_sin"], np.sin(angle).fillna(0), atol=1e-12)
        np.testing.assert_allclose(features["merge_hour_cos"], np.cos(angle).fillna(0), atol=1e-12)
        weekend = (merged.dt.dayofweek >= 5).astype(float)
        np.testing.assert_array_equal(features["merged_on_weekend"], weekend)
        expected_hours = np.log1p(hours.clip(lower=0).fillna(0))
        np.testing.assert_allclose(features["log_hours_to_merge"], expected_hours, rtol=1e-12)
