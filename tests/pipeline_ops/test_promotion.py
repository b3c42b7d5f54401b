"""Local blue/green: the cluster's AnalysisTemplate run against real model-serving processes
serving real registered models, and the `champion` alias moved only when it passes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import requests

from pipeline_contracts.registry import ModelReference
from pipeline_ops.promotion import (
    CHALLENGER,
    CHAMPION,
    PromotionError,
    alias_version,
    blue_green,
    load_template,
    run_analysis,
    start_serving,
    stop_kept_serving,
)
from pipeline_ops.runner import stage_process_env

MODEL = "promotion-under-test"  # its own registered model: aliases here touch nothing else


def test_the_template_is_the_clusters_pre_promotion_analysis() -> None:
    template = load_template()
    kinds = {next(iter(m["provider"])) for m in template["spec"]["metrics"]}
    assert kinds == {"web", "job"}


def _with_gate_option(template: dict, option: str, value: str) -> dict:
    changed = copy.deepcopy(template)
    for metric in changed["spec"]["metrics"]:
        if "job" in metric["provider"]:
            args = metric["provider"]["job"]["spec"]["template"]["spec"]["containers"][0]["args"]
            args[args.index(option) + 1] = value
    return changed


@pytest.fixture(scope="module")
def mlflow_client(local_env):
    from mlflow import MlflowClient

    return MlflowClient(local_env.platform.service("mlflow").url)


@pytest.fixture(scope="module")
def serving_env(local_env) -> dict[str, str]:
    return stage_process_env(local_env, "model-serving")


@pytest.fixture(scope="module")
def green(register_scorer, serving_env, tmp_path_factory):
    version = register_scorer(MODEL)
    instance = start_serving(
        "green",
        ModelReference.at_version(MODEL, version),
        serving_env,
        tmp_path_factory.mktemp("green"),
    )
    yield version, instance
    instance.stop()


def _attainable(template: dict) -> dict:
    """The template with service levels this shared 2-core test machine meets under load."""
    for option, value in [("--min-rps", "1"), ("--max-p95-ms", "5000"), ("--max-p99-ms", "10000")]:
        template = _with_gate_option(template, option, value)
    return template


def test_analysis_passes_on_a_healthy_preview(green, serving_env, tmp_path: Path) -> None:
    _, instance = green
    result = run_analysis(
        instance.url,
        MODEL,
        tmp_path,
        run_time="4s",
        template=_attainable(load_template()),
        env=serving_env,
    )
    assert result.passed, result.failures()
    gate = next(m for m in result.metrics if m.name == "load-gate")
    assert gate.data  # the load gate's own report, with its figures
    assert (tmp_path / "report.json").exists()
    assert (tmp_path / "report.md").exists()


def test_analysis_fails_on_an_impossible_latency_target(green, serving_env, tmp_path) -> None:
    _, instance = green
    template = _with_gate_option(load_template(), "--max-p99-ms", "0.001")
    result = run_analysis(
        instance.url, MODEL, tmp_path, run_time="3s", template=template, env=serving_env
    )
    assert not result.passed
    assert any(f.startswith("load-gate:") for f in result.failures())


def test_analysis_fails_when_the_preview_serves_another_model(green, serving_env, tmp_path):
    _, instance = green
    result = run_analysis(
        instance.url, "some-other-model", tmp_path, run_time="3s", env=serving_env
    )
    assert any(f.startswith("preview-model:") for f in result.failures())


def test_an_unsupported_template_is_refused_by_name(green, tmp_path) -> None:
    template = copy.deepcopy(load_template())
    template["spec"]["metrics"][0]["successCondition"] = "result in ['ready']"
    with pytest.raises(PromotionError, match="successCondition"):
        run_analysis(green[1].url, MODEL, tmp_path, template=template)


def test_first_model_is_promoted_then_a_rerun_changes_nothing(
    register_scorer, mlflow_client, serving_env, tmp_path, monkeypatch
) -> None:
    import pipeline_ops.promotion as promotion

    monkeypatch.setattr(promotion, "load_template", lambda: _attainable(load_template()))
    name = f"{MODEL}-first"
    version = register_scorer(name)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version)

    decision = blue_green(
        mlflow_client, name, serving_env, tmp_path, gate_run_time="4s", keep_serving=True
    )
    assert decision.promoted, decision.reason
    assert decision.champion_before is None
    assert alias_version(mlflow_client, name, CHAMPION) == version
    # the promoted service was left running, and answers as the champion
    assert requests.get(f"{decision.active_url}/version", timeout=5).json()["model_version"] == (
        version
    )
    assert stop_kept_serving(decision.active_pid)
    with pytest.raises(requests.RequestException):
        requests.get(f"{decision.active_url}/healthz", timeout=2)

    again = blue_green(mlflow_client, name, serving_env, tmp_path, gate_run_time="4s")
    assert not again.promoted
    assert "already champion" in again.reason
    assert alias_version(mlflow_client, name, CHAMPION) == version


def test_a_challenger_failing_analysis_leaves_the_champion(
    register_scorer, mlflow_client, serving_env, tmp_path, monkeypatch
) -> None:
    import pipeline_ops.promotion as promotion

    name = f"{MODEL}-gate"
    champion = register_scorer(name)
    mlflow_client.set_registered_model_alias(name, CHAMPION, champion)
    challenger = register_scorer(name)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, challenger)
    impossible = _with_gate_option(load_template(), "--max-p99-ms", "0.001")
    monkeypatch.setattr(promotion, "load_template", lambda: impossible)

    decision = blue_green(mlflow_client, name, serving_env, tmp_path, gate_run_time="3s")
    assert not decision.promoted
    assert "load-gate" in decision.reason
    assert (decision.champion_before, decision.champion_after) == (champion, champion)
    assert alias_version(mlflow_client, name, CHAMPION) == champion


def test_a_champion_this_code_cannot_serve_does_not_block_the_challenger(
    local_env, scorer, register_scorer, mlflow_client, serving_env, tmp_path, monkeypatch
) -> None:
    """An upgraded machine: the champion was trained on an older feature spec, which the
    current model-serving refuses to load. Blue fails fast with the reason and green is
    judged alone."""
    import dataclasses

    import mlflow

    import pipeline_ops.promotion as promotion
    from ml_pipeline.training.pyfunc import log_scorer_model

    monkeypatch.setattr(promotion, "load_template", lambda: _attainable(load_template()))
    name = f"{MODEL}-old-champion"
    mlflow.set_tracking_uri(local_env.platform.service("mlflow").url)
    with mlflow.start_run():
        old = dataclasses.replace(scorer, feature_spec_version="2")
        champion = str(log_scorer_model(old, tmp_path, name).registered_model_version)
    mlflow_client.set_registered_model_alias(name, CHAMPION, champion)
    with pytest.raises(PromotionError, match="feature spec 2"):
        start_serving(
            "blue", ModelReference.at_version(name, champion), serving_env, tmp_path, timeout=60
        )

    challenger = register_scorer(name)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, challenger)
    steps: list[str] = []
    decision = blue_green(
        mlflow_client, name, serving_env, tmp_path, gate_run_time="3s", on_step=steps.append
    )
    assert decision.promoted, decision.reason
    assert "blue could not be served" in decision.reason
    assert any(step.startswith("blue: not served") for step in steps)
    assert alias_version(mlflow_client, name, CHAMPION) == challenger
