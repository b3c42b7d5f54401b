"""`quality-gate` against real model-serving processes serving real registered models: a
model trained as ml-training trains it passes; a real version of the same model trained on
one repository's pull requests only (an experiment registered under the production name by
mistake) loads, serves, passes every name and version check, and fails here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_contracts.scorer import AnomalyScorer

BIN = Path(sys.executable).parent
MODEL = "quality-under-test"


def quality_gate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "quality-gate"), *args], capture_output=True, text=True, timeout=timeout
    )


def trained_on(repository: str) -> AnomalyScorer:
    """A scorer trained as ml-training trains an experiment with TRAINING_REPOSITORIES set
    to ``repository``: that repository's pull requests only, time split, default settings."""
    from ml_pipeline.training.bench import sample_rows
    from ml_pipeline.training.settings import TrainingSettings
    from ml_pipeline.training.steps import fit_and_evaluate, select_repositories, time_split

    frame = select_repositories(sample_rows(), (repository,))
    train, valid, test = time_split(frame)
    return fit_and_evaluate(frame, train, valid, test, TrainingSettings(), None).scorer


@pytest.fixture
def serve(register_scorer, start_server):
    """A ready model-serving process serving ``scorer``, registered as a version of MODEL."""

    def start(scorer: AnomalyScorer):
        version = register_scorer(MODEL, scorer)
        server = start_server(SERVING_MODEL_URI=f"models:/{MODEL}/{version}")
        server.wait_ready()
        return server

    return start


def test_a_model_trained_as_ml_training_trains_it_passes(serve, sound_scorer, tmp_path) -> None:
    server = serve(sound_scorer)
    result = quality_gate("--host", server.url, "--report-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"]
    assert report["measured"]["pull_requests"] == 300
    assert report["measured"]["flag_rate"] <= 0.05
    assert "PASSED" in (tmp_path / "report.md").read_text()


def test_a_version_trained_on_another_repository_only_fails(serve, tmp_path: Path) -> None:
    server = serve(trained_on("pallets/flask"))
    result = quality_gate("--host", server.url, "--report-dir", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    (check,) = report["checks"]
    assert check["name"] == "flag_rate"
    assert not check["passed"]
    # many times what a sound version flags, most of it in the repository it never saw
    assert report["measured"]["flag_rate"] > 0.10
    per_repository = report["measured"]["flag_rate_per_repository"]
    assert per_repository["fastapi/fastapi"] > per_repository["pallets/flask"]
    assert f"models:/{MODEL}" not in result.stdout  # it names the served model, as name/version
    assert f"{MODEL}/" in result.stdout
    assert "FAILED" in result.stdout


def test_an_unreachable_service_fails_naming_it(tmp_path: Path) -> None:
    result = quality_gate("--host", "http://127.0.0.1:9", "--report-dir", str(tmp_path))
    assert result.returncode == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert "127.0.0.1:9" in report["error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "preview:8080"], "--host"),
        (["--host", "http://x", "--max-flag-rate", "2"], "--max-flag-rate"),
        (["--host", "http://x", "--sample", "/nonexistent.jsonl.gz"], "--sample"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(args, message, tmp_path: Path) -> None:
    result = quality_gate(*args, "--report-dir", str(tmp_path))
    assert result.returncode == 2
    assert message in result.stderr
