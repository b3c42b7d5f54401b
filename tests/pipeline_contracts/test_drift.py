"""Drift: the PSI of what serving sees against the model's reference, per repository."""

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


def _two_repositories(rng: np.random.Generator, squash: int, merged: int) -> np.ndarray:
    """Hours to merge of ``squash`` pull requests of a squash-merging repository (always 0)
    and ``merged`` of a repository with real merge times."""
    return np.r_[np.zeros(squash), rng.lognormal(2, 1, merged)]


def test_a_change_in_the_repository_mix_alone_is_not_drift() -> None:
    rng = np.random.default_rng(3)
    hours = _two_repositories(rng, 1000, 1000)
    names = ["squash"] * 1000 + ["merged"] * 1000
    reference = reference_distribution(hours[:, None], ["hours"], names)
    window = DriftWindow(reference, ["hours"])
    # the same two repositories' traffic, but 98 % from the squash-merging one
    window.observe(_two_repositories(rng, 980, 20)[:, None], ["squash"] * 980 + ["merged"] * 20)
    assert window.psi()["hours"] < 0.1
    blind = DriftWindow({"hours": FeatureReference.of(hours)}, ["hours"])  # one reference
    blind.observe(_two_repositories(rng, 980, 20)[:, None])
    assert blind.psi()["hours"] > DRIFT_ALERT_PSI


def test_a_repository_shifting_within_itself_still_drifts() -> None:
    rng = np.random.default_rng(4)
    hours = _two_repositories(rng, 1000, 1000)
    names = ["squash"] * 1000 + ["merged"] * 1000
    window = DriftWindow(reference_distribution(hours[:, None], ["hours"], names), ["hours"])
    # the merging repository now takes 20 times as long
    window.observe(rng.lognormal(2 + np.log(20), 1, 500)[:, None], ["merged"] * 500)
    assert window.psi()["hours"] > DRIFT_ALERT_PSI


def test_records_of_an_unknown_repository_are_compared_with_the_whole_reference() -> None:
    rng = np.random.default_rng(5)
    hours = _two_repositories(rng, 1000, 1000)
    names = ["squash"] * 1000 + ["merged"] * 1000
    window = DriftWindow(reference_distribution(hours[:, None], ["hours"], names), ["hours"], 2000)
    window.observe(_two_repositories(rng, 1000, 1000)[:, None], ["elsewhere"] * 2000)
    assert window.psi()["hours"] < 0.1


def test_the_window_forgets_old_records_repositories_with_them() -> None:
    rng = np.random.default_rng(6)
    hours = _two_repositories(rng, 1000, 1000)
    names = ["squash"] * 1000 + ["merged"] * 1000
    window = DriftWindow(reference_distribution(hours[:, None], ["hours"], names), ["hours"], 300)
    window.observe(rng.lognormal(2, 1, 300)[:, None], ["merged"] * 300)
    for _ in range(30):  # then the squash-merging repository's, ten at a time (the ring wraps)
        window.observe(np.zeros((10, 1)), ["squash"] * 10)
    assert window.records == 300
    assert window.psi()["hours"] < 0.01


def test_a_reference_round_trips_with_its_repositories_and_an_old_one_has_none() -> None:
    reference = FeatureReference.of(np.array([0.0] * 50 + [1.0] * 50), ["a"] * 50 + ["b"] * 50)
    again = FeatureReference.from_dict(reference.to_dict())
    assert again.repositories["a"].tolist() == [1.0, 0.0]
    assert again.repositories["b"].tolist() == [0.0, 1.0]
    old = FeatureReference.from_dict({"edges": [1.0], "shares": [0.5, 0.5]})
    assert old.repositories == {}
    assert old.expected_shares({"a": 10}).tolist() == [0.5, 0.5]
