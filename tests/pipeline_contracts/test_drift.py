"""Drift: the PSI of what serving sees against the training distribution."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline_contracts.drift import (
    DRIFT_ALERT_PSI,
    DriftWindow,
    FeatureReference,
    population_stability_index,
    reference_distribution,
)


@pytest.fixture
def training() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.column_stack([rng.lognormal(3, 1, 5000), rng.integers(0, 2, 5000)])


def test_records_like_the_training_data_do_not_drift(training) -> None:
    window = DriftWindow(reference_distribution(training, ["size", "flag"]), ["size", "flag"])
    rng = np.random.default_rng(1)
    window.observe(np.column_stack([rng.lognormal(3, 1, 1000), rng.integers(0, 2, 1000)]))
    assert all(psi < 0.1 for psi in window.psi().values()), window.psi()


def test_shifted_records_rise_past_the_alert_level_in_the_shifted_feature_only(training) -> None:
    window = DriftWindow(reference_distribution(training, ["size", "flag"]), ["size", "flag"])
    rng = np.random.default_rng(1)
    window.observe(np.column_stack([rng.lognormal(4, 1, 1000), rng.integers(0, 2, 1000)]))
    psi = window.psi()
    assert psi["size"] > DRIFT_ALERT_PSI
    assert psi["flag"] < 0.1


def test_the_window_forgets_old_records(training) -> None:
    window = DriftWindow(reference_distribution(training, ["size", "flag"]), ["size", "flag"], 500)
    rng = np.random.default_rng(2)
    window.observe(np.column_stack([rng.lognormal(5, 1, 500), rng.integers(0, 2, 500)]))
    assert window.psi()["size"] > DRIFT_ALERT_PSI
    for _ in range(5):  # ordinary traffic again, in small batches
        window.observe(np.column_stack([rng.lognormal(3, 1, 100), rng.integers(0, 2, 100)]))
    assert window.records == 500
    assert window.psi()["size"] < 0.1


def test_a_binary_feature_gets_two_bins_and_the_psi_is_zero_on_its_own_shares() -> None:
    reference = FeatureReference.of(np.array([0.0] * 70 + [1.0] * 30))
    assert len(reference.shares) == 2
    assert reference.shares.tolist() == pytest.approx([0.7, 0.3])
    assert population_stability_index(reference.shares, np.array([70, 30])) == pytest.approx(0)
    assert FeatureReference.from_dict(reference.to_dict()).shares.tolist() == pytest.approx(
        [0.7, 0.3]
    )
