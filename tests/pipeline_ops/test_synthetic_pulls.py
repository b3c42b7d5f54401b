"""The synthetic pull requests of `make bench-scale`: the sample's columns and types, the
same rows for the same seed, and rows every stage accepts (data-fetch's record, the
preprocessing input rules, finite features)."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_fetch.records import normalize_rest_pull_request
from ml_pipeline.feature_frames import (
    compute_features,
    context_columns,
    feature_problems,
    input_problems,
)
from pipeline_contracts.features import CONTEXT_COLUMNS
from pipeline_contracts.pull_requests import PULL_REQUEST_COLUMNS
from pipeline_ops.synthetic_pulls import (
    rest_payloads,
    sample_frame,
    synthetic_pull_requests,
    write_parquet,
)


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return sample_frame()


@pytest.fixture(scope="module")
def synthetic(sample: pd.DataFrame) -> pd.DataFrame:
    return synthetic_pull_requests(6_000, seed=11, pulls_per_repository=500, sample=sample)


def test_keeps_the_sample_columns_and_types(sample, synthetic) -> None:
    assert list(synthetic.columns) == [c.name for c in PULL_REQUEST_COLUMNS]
    assert synthetic.dtypes.to_dict() == sample.dtypes.to_dict()
    assert len(synthetic) == 6_000


def test_the_same_seed_gives_the_same_rows_and_another_seed_others(sample, synthetic) -> None:
    again = synthetic_pull_requests(6_000, seed=11, pulls_per_repository=500, sample=sample)
    other = synthetic_pull_requests(6_000, seed=12, pulls_per_repository=500, sample=sample)

    pd.testing.assert_frame_equal(again, synthetic)
    assert not other.equals(synthetic)


def test_the_parquet_file_holds_the_generated_rows(tmp_path, sample) -> None:
    path = tmp_path / "pulls.parquet"
    # 5 a repository: the file is written in several chunks of whole repositories
    written = write_parquet(path, 2_500, seed=3, pulls_per_repository=5)

    read = pd.read_parquet(path)
    expected = synthetic_pull_requests(2_500, seed=3, pulls_per_repository=5, sample=sample)
    assert written == 2_500
    assert pq.ParquetFile(path).num_row_groups > 1
    # times are stored in microseconds (what Spark reads), the same instants
    pd.testing.assert_frame_equal(read, expected, check_dtype=False)


def test_rows_pass_data_fetch_normalisation(synthetic) -> None:
    fetched_at = datetime.now(UTC)

    records = [normalize_rest_pull_request(p, now=fetched_at) for p in rest_payloads(synthetic)]

    assert len(records) == len(synthetic)
    assert {r.repository for r in records} == set(synthetic["repository"])


def test_rows_pass_the_preprocessing_rules_and_give_finite_features(synthetic) -> None:
    assert input_problems(synthetic).isna().all()
    rows = synthetic.copy()
    rows[list(CONTEXT_COLUMNS)] = context_columns(rows)
    assert feature_problems(compute_features(rows)).isna().all()


def test_repositories_number_their_pull_requests_in_creation_order(synthetic) -> None:
    sizes = synthetic.groupby("repository").size()
    assert sizes.iloc[:-1].min() >= 250  # 500 a repository, +-50 % (the last takes the rest)
    assert sizes.max() <= 750
    for _, rows in synthetic.groupby("repository"):
        assert rows["number"].tolist() == list(range(1, len(rows) + 1))
        assert rows["created_at"].is_monotonic_increasing


def test_sizes_and_texts_follow_the_sample(sample, synthetic) -> None:
    quantiles = [0.25, 0.5, 0.75, 0.9]
    for column in ("changed_files", "commits"):
        assert synthetic[column].quantile(quantiles).tolist() == pytest.approx(
            sample[column].quantile(quantiles).tolist(), rel=0.25, abs=1
        )
    for column in ("title", "body"):
        assert synthetic[column].str.len().median() == pytest.approx(
            sample[column].str.len().median(), rel=0.1, abs=2
        )
    assert synthetic["title"].nunique() > 0.95 * len(synthetic)  # distinct, like real titles
