"""The drift reference training saves with the model (``training/steps.py``), on the bundled
real sample: ordinary traffic of its newest period stays below the alert level in every
feature, and the same pull requests with 50 times the additions cross it (issue 24)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml_pipeline.anomalies import raw_inputs
from ml_pipeline.feature_frames import compute_features
from ml_pipeline.training.bench import sample_rows
from ml_pipeline.training.settings import TrainingSettings
from ml_pipeline.training.steps import drift_reference, time_split, train_and_evaluate
from pipeline_contracts.drift import DRIFT_ALERT_PSI, DriftWindow
from pipeline_contracts.features import FEATURE_NAMES
from pipeline_contracts.scorer import AnomalyScorer


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return sample_rows()


@pytest.fixture(scope="module")
def registered(sample) -> AnomalyScorer:
    """The scorer ml-training registers from the bundled sample (as ``make run`` does)."""
    return train_and_evaluate(sample, TrainingSettings(max_epochs=3), None).scorer


@pytest.fixture(scope="module")
def newest_period(sample) -> pd.DataFrame:
    """The sample's newest pull requests: the registered model's test split (758, from
    2025-10, 98 % fastapi: flask's sample ends in 2026-03)."""
    return time_split(sample)[2]


def _served(scorer: AnomalyScorer, rows: pd.DataFrame, by_repository: bool = True):
    """The PSI per feature that serving's drift window reports after scoring ``rows``."""
    window = DriftWindow(scorer.reference, scorer.feature_names)
    repositories = rows["repository"].tolist() if by_repository else ()
    window.observe(rows[list(FEATURE_NAMES)].to_numpy(dtype=float), repositories)
    return window.psi()


def test_ordinary_traffic_of_the_newest_period_stays_below_the_alert_level(
    registered, newest_period
) -> None:
    psi = _served(registered, newest_period)
    assert set(psi) == set(FEATURE_NAMES)
    assert max(psi.values()) < DRIFT_ALERT_PSI, psi


def test_fifty_times_the_additions_cross_the_alert_level_in_what_changed(
    registered, newest_period
) -> None:
    raw = raw_inputs(newest_period)
    raw["additions"] *= 50
    drifted = newest_period.assign(**compute_features(raw))
    psi = _served(registered, drifted)
    assert psi["log_additions"] > DRIFT_ALERT_PSI, psi
    for unchanged in ("log_deletions", "log_commits", "log_hours_to_merge", "log_title_length"):
        assert psi[unchanged] < 0.1, (unchanged, psi)


def test_a_change_in_which_repositories_send_traffic_is_not_drift(
    registered, newest_period
) -> None:
    """The reference holds fastapi's and flask's newest pull requests alike; the newest
    period is 98 % fastapi, whose squash merges have 0 hours to merge. Compared with the
    reference as a whole (what serving did before), that mix alone crosses the level."""
    blind = _served(registered, newest_period, by_repository=False)
    assert blind["log_hours_to_merge"] > DRIFT_ALERT_PSI, blind
    assert _served(registered, newest_period)["log_hours_to_merge"] < 0.1


def test_the_reference_is_the_newest_pull_requests_of_each_repository(sample) -> None:
    reference = drift_reference(sample)["log_hours_to_merge"]
    assert set(reference.repositories) == {"fastapi/fastapi", "pallets/flask"}
    # fastapi's squash merges: every pull request in the first bin (0 hours)
    assert reference.repositories["fastapi/fastapi"][0] == pytest.approx(1.0, abs=0.01)
    assert reference.repositories["pallets/flask"][0] < 0.5
    # 1,000 of each repository, not the 3,542 : 1,511 of the whole sample
    assert reference.shares[0] == pytest.approx(
        np.mean([reference.repositories[r][0] for r in reference.repositories]), abs=0.01
    )
