"""The injected-anomaly generator and the weak labels from the bundled samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml_pipeline.anomalies import (
    KINDS,
    inject_anomalies,
    load_revert_labels,
    raw_inputs,
    revert_labels,
)
from ml_pipeline.feature_frames import compute_features
from pipeline_contracts.features import FEATURE_NAMES


@pytest.fixture(scope="module")
def rows(read_samples, feature_rows) -> pd.DataFrame:
    return feature_rows(read_samples(100))


def test_raw_inputs_rebuilt_from_published_rows_give_the_same_features(rows) -> None:
    recomputed = compute_features(raw_inputs(rows))
    np.testing.assert_allclose(
        recomputed.to_numpy(), rows[list(FEATURE_NAMES)].to_numpy(), atol=1e-9
    )


def test_injected_rows_obey_the_feature_spec_and_look_anomalous(rows) -> None:
    injected = inject_anomalies(rows, 200, seed=1)
    assert len(injected) == 200
    assert set(injected["kind"]) == set(KINDS)
    np.testing.assert_allclose(
        compute_features(raw_inputs(injected)).to_numpy(),
        injected[list(FEATURE_NAMES)].to_numpy(),
        atol=1e-9,
    )
    churn = injected["additions"] + injected["deletions"]
    assert (churn >= 1500).all()
    assert churn.median() > 20 * (rows["additions"] + rows["deletions"]).median()
    deletions = injected[injected["kind"] == "mass_deletion"]
    assert (deletions["deletions"] > 100 * deletions["additions"].clip(lower=1)).all()
    offhours = injected[injected["kind"] == "instant_offhours_merge"]
    hour = np.arctan2(offhours["merge_hour_sin"], offhours["merge_hour_cos"]) * 24 / (2 * np.pi)
    assert hour.between(1, 5).all()
    assert (offhours["merged_on_weekend"] == 1).all()
    assert (np.expm1(offhours["log_hours_to_merge"]) < 0.06).all()  # within minutes
    newcomers = injected[injected["kind"] == "newcomer_bulk"]
    assert (newcomers["log_author_prior_pull_requests_capped"] == 0).all()


def test_injection_is_seeded_and_leaves_the_real_rows_alone(rows) -> None:
    before = rows.copy()
    first, second = inject_anomalies(rows, 50, seed=7), inject_anomalies(rows, 50, seed=7)
    pd.testing.assert_frame_equal(first, second)
    pd.testing.assert_frame_equal(rows, before)
    assert not inject_anomalies(rows, 50, seed=8).equals(first)


def test_revert_labels_mark_the_reverted_pull_requests(samples_dir) -> None:
    labels = load_revert_labels(samples_dir)
    assert labels["pallets/flask"] >= {669, 859, 2721}
    assert labels["fastapi/fastapi"] == {10228, 12127, 12128, 13314}
    rows = pd.DataFrame({"repository": ["pallets/flask"] * 2, "number": [669, 670]})
    assert list(revert_labels(rows, labels)) == [1, 0]
    assert load_revert_labels(samples_dir / "missing") == {}


def test_rows_published_with_merged_at_keep_real_merge_times() -> None:
    from ml_pipeline.training.bench import sample_rows

    rows = sample_rows().iloc[::25]
    assert "merged_at" in rows
    np.testing.assert_allclose(
        compute_features(raw_inputs(rows)).to_numpy(), rows[list(FEATURE_NAMES)].to_numpy()
    )
    injected = inject_anomalies(rows, 80, seed=3)
    np.testing.assert_allclose(
        compute_features(raw_inputs(injected)).to_numpy(),
        injected[list(FEATURE_NAMES)].to_numpy(),
        atol=1e-9,
    )
    offhours = injected[injected["kind"] == "instant_offhours_merge"]
    merged = pd.to_datetime(offhours["merged_at"], utc=True)
    assert len(offhours)
    assert (merged.dt.dayofweek >= 5).all()
    assert merged.dt.hour.between(1, 4).all()
    minutes = (merged - pd.to_datetime(offhours["created_at"], utc=True)).dt.total_seconds() / 60
    assert minutes.between(1, 3).all()
