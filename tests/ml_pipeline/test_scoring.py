"""The scorer: the trained torch autoencoder as numpy arrays, saved without pickle."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_pipeline.model import Autoencoder
from pipeline_contracts.features import FEATURE_NAMES, FeatureContext
from pipeline_contracts.scorer import AnomalyScorer


@pytest.fixture
def autoencoder() -> Autoencoder:
    torch.manual_seed(3)
    return Autoencoder(len(FEATURE_NAMES), hidden=8, bottleneck=3).eval()


@pytest.fixture
def rows() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(500, len(FEATURE_NAMES))).astype(np.float32)


def test_the_array_network_reconstructs_like_the_torch_module(autoencoder, rows) -> None:
    network = autoencoder.dense_network()
    assert network.shape() == [13, 8, 3, 8, 13]
    assert network.relu == (True, False, True, False)
    with torch.inference_mode():
        expected = autoencoder(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(network(rows), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(network(rows[:1]), expected[:1], rtol=1e-5, atol=1e-6)


def _scorer(autoencoder: Autoencoder, rows: np.ndarray) -> AnomalyScorer:
    context = FeatureContext({"o/a": 12.0}, {"o/a": {"ann": 4}})
    scorer = AnomalyScorer(
        autoencoder.dense_network(), rows.mean(axis=0), rows.std(axis=0), 0.0, context=context
    )
    scorer.threshold = float(np.quantile(scorer.errors(rows).mean(axis=1), 0.9))
    return scorer


def test_a_saved_scorer_loads_and_scores_the_same(autoencoder, rows, tmp_path: Path) -> None:
    scorer = _scorer(autoencoder, rows)
    path = tmp_path / "scorer.npz"
    scorer.save(path)
    assert path.exists()
    assert not (tmp_path / "scorer.npz.npz").exists()
    loaded = AnomalyScorer.load(path)
    assert loaded.score_features(rows) == scorer.score_features(rows)
    assert loaded.context == scorer.context
    assert sum(v["is_anomaly"] for v in loaded.score_features(rows)) == 50


def test_a_scorer_of_another_format_or_spec_is_refused(autoencoder, rows, tmp_path) -> None:
    path = tmp_path / "scorer.npz"
    _scorer(autoencoder, rows).save(path)
    with np.load(path) as saved:
        arrays = {name: saved[name] for name in saved.files}
    header = json.loads(str(arrays["header"]))

    for change, message in (
        ({"format": "torch-state-dict"}, "retrain or deploy matching code"),
        ({"feature_spec_version": "1"}, "trained on feature spec 1"),
    ):
        other = tmp_path / "other.npz"
        with open(other, "wb") as file:
            np.savez(file, **{**arrays, "header": np.array(json.dumps({**header, **change}))})
        with pytest.raises(ValueError, match=message):
            AnomalyScorer.load(other)


def test_the_scorer_file_holds_no_pickle(autoencoder, rows, tmp_path) -> None:
    path = tmp_path / "scorer.npz"
    _scorer(autoencoder, rows).save(path)
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            assert archive.read(name)[:6] == b"\x93NUMPY", name
            assert b"pickle" not in archive.read(name)[:200].lower()
