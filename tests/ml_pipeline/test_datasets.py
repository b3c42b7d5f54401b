"""Only a complete feature data set, computed with this code's feature spec, is read."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ml_pipeline.datasets import DatasetError, load_feature_dataset
from pipeline_contracts.features import FEATURE_NAMES, FEATURE_SPEC_VERSION


@pytest.fixture(scope="module")
def frame(read_samples, feature_rows) -> pd.DataFrame:
    return feature_rows(read_samples(20))


def test_reads_the_run_latest_points_at(tmp_path: Path, frame, write_feature_run) -> None:
    write_feature_run(tmp_path, "run-a", frame.iloc[:10])
    write_feature_run(tmp_path, "run-b", frame)
    dataset = load_feature_dataset(str(tmp_path))
    assert dataset.run_id == "run-b"
    assert dataset.manifest["rows"] == len(dataset.frame) == len(frame)
    assert set(FEATURE_NAMES) <= set(dataset.frame.columns)
    # an explicit run id wins over LATEST
    assert len(load_feature_dataset(str(tmp_path), "run-a").frame) == 10


def test_refuses_a_run_without_manifest(tmp_path: Path, frame, write_feature_run) -> None:
    write_feature_run(tmp_path, "run-ok", frame)
    write_feature_run(tmp_path, "run-crashed", frame, with_manifest=False, publish=False)
    with pytest.raises(DatasetError, match=r"run-crashed.*manifest\.json"):
        load_feature_dataset(str(tmp_path), "run-crashed")
    # LATEST pointing at an incomplete run is refused too
    (tmp_path / "LATEST").write_text("run-crashed")
    with pytest.raises(DatasetError, match=r"run-crashed.*incomplete"):
        load_feature_dataset(str(tmp_path))


def test_refuses_another_feature_spec_version(tmp_path: Path, frame, write_feature_run) -> None:
    other = "0" if FEATURE_SPEC_VERSION != "0" else "99"
    write_feature_run(tmp_path, "run-old", frame, manifest={"feature_spec_version": other})
    with pytest.raises(DatasetError) as error:
        load_feature_dataset(str(tmp_path))
    message = str(error.value)
    assert "run-old" in message
    assert repr(other) in message
    assert repr(FEATURE_SPEC_VERSION) in message


def test_refuses_a_root_without_latest(tmp_path: Path, frame, write_feature_run) -> None:
    write_feature_run(tmp_path, "run-unpublished", frame, publish=False)
    with pytest.raises(DatasetError, match="no LATEST") as error:
        load_feature_dataset(str(tmp_path))
    assert str(tmp_path) in str(error.value)
    with pytest.raises(DatasetError, match="no LATEST"):
        load_feature_dataset(str(tmp_path / "never-written"))
