"""Local blue/green: the cluster's AnalysisTemplate run against real model-serving processes
serving real registered models, and the `champion` alias moved only when it passes. Every
process it starts is in the platform's state record while it runs (`make down` stops what
is there), and an interrupted run (Ctrl-C) leaves none behind."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from proc_table import cmdline, group_members

from pipeline_contracts.registry import ModelReference
from pipeline_ops.base import processes
from pipeline_ops.base.processes import StateFile
from pipeline_ops.promotion import (
    CHALLENGER,
    CHAMPION,
    PromotionError,
    alias_version,
    blue_green,
    load_template,
    run_analysis,
    start_serving,
    stop,
    stop_kept_serving,
)
from pipeline_ops.runner import stage_process_env

MODEL = "promotion-under-test"  # its own registered model: aliases here touch nothing else


def test_the_template_is_the_clusters_pre_promotion_analysis() -> None:
    template = load_template()
    kinds = {next(iter(m["provider"])) for m in template["spec"]["metrics"]}
    assert kinds == {"web", "job"}


def _with_gate_option(template: dict, option: str, value: str) -> dict:
    """The template with ``option`` of the job metric that takes it set to ``value``."""
    changed = copy.deepcopy(template)
    for metric in changed["spec"]["metrics"]:
        if "job" in metric["provider"]:
            args = metric["provider"]["job"]["spec"]["template"]["spec"]["containers"][0]["args"]
            if option in args:
                args[args.index(option) + 1] = value
    return changed


@pytest.fixture(scope="module")
def mlflow_client(local_env):
    from mlflow import MlflowClient

    return MlflowClient(local_env.platform.service("mlflow").url)


@pytest.fixture(scope="module")
def register(register_scorer, sound_scorer):
    """Register a sound model's version (the quality gate's false-alarm limit holds)."""
    return lambda name: register_scorer(name, sound_scorer)


@pytest.fixture(scope="module")
def serving_env(local_env) -> dict[str, str]:
    return stage_process_env(local_env, "model-serving")


@pytest.fixture
def state(tmp_path) -> StateFile:
    """A platform's state record of its own (what `make down` would stop)."""
    return StateFile(tmp_path / "platform" / "state.json")


@pytest.fixture(scope="module")
def green(register, serving_env, tmp_path_factory):
    version = register(MODEL)
    state = StateFile(tmp_path_factory.mktemp("green-state") / "state.json")
    record = start_serving(
        "green",
        ModelReference.at_version(MODEL, version),
        serving_env,
        tmp_path_factory.mktemp("green"),
        state,
    )
    assert set(state.running()) == {"model-serving-green"}
    yield version, record
    stop(state, record)


def _attainable(template: dict) -> dict:
    """The template with service levels this shared 2-core test machine meets under load."""
    for option, value in [("--min-rps", "1"), ("--max-p95-ms", "5000"), ("--max-p99-ms", "10000")]:
        template = _with_gate_option(template, option, value)
    return template


def test_analysis_passes_on_a_healthy_preview(green, state, tmp_path: Path) -> None:
    version, instance = green
    result = run_analysis(
        instance.url,
        ModelReference.at_version(MODEL, version),
        tmp_path,
        run_time="4s",
        template=_attainable(load_template()),
        state=state,
    )
    assert result.passed, result.failures()
    assert state.running() == {}  # the load gate was recorded while it ran, then dropped
    gate = next(m for m in result.metrics if m.name == "load-gate")
    assert gate.data  # the load gate's own report, with its figures
    for program in ("load-gate", "quality-gate"):  # each job's own report
        assert (tmp_path / program / "report.json").exists()
        assert (tmp_path / program / "report.md").exists()


def test_analysis_fails_on_an_impossible_latency_target(green, state, tmp_path) -> None:
    version, instance = green
    template = _with_gate_option(load_template(), "--max-p99-ms", "0.001")
    pinned = ModelReference.at_version(MODEL, version)
    result = run_analysis(instance.url, pinned, tmp_path, run_time="3s", template=template,
                          state=state)  # fmt: skip
    assert not result.passed
    assert any(f.startswith("load-gate:") for f in result.failures())


def test_analysis_fails_when_the_preview_serves_another_model(green, state, tmp_path):
    version, instance = green
    other = ModelReference.at_version("some-other-model", version)
    result = run_analysis(instance.url, other, tmp_path, run_time="3s", state=state)
    failed = {f.split(":")[0] for f in result.failures()}
    assert {"preview-model", "preview-model-name"} <= failed, result.failures()


def test_analysis_fails_when_the_preview_serves_another_version_than_pinned(
    green, state, tmp_path
) -> None:
    """Git pins one version; a preview that serves any other fails, even of the same model."""
    version, instance = green
    pinned = ModelReference.at_version(MODEL, int(version) + 1)
    result = run_analysis(instance.url, pinned, tmp_path, run_time="3s", state=state)
    failed = {f.split(":")[0] for f in result.failures()}
    assert "preview-model" in failed, result.failures()
    assert "preview-model-name" not in failed, result.failures()


def test_an_unsupported_template_is_refused_by_name(green, state, tmp_path) -> None:
    template = copy.deepcopy(load_template())
    template["spec"]["metrics"][0]["successCondition"] = "result in ['ready']"
    with pytest.raises(PromotionError, match="successCondition"):
        run_analysis(green[1].url, ModelReference.at_version(MODEL, green[0]), tmp_path,
                     template=template, state=state)  # fmt: skip


def test_first_model_is_promoted_then_a_rerun_changes_nothing(
    register, mlflow_client, serving_env, state, tmp_path, monkeypatch
) -> None:
    import pipeline_ops.promotion as promotion

    monkeypatch.setattr(promotion, "load_template", lambda: _attainable(load_template()))
    name = f"{MODEL}-first"
    version = register(name)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version)

    decision = blue_green(
        mlflow_client, name, serving_env, tmp_path, state, gate_run_time="4s", keep_serving=True
    )
    assert decision.promoted, decision.reason
    assert decision.champion_before is None
    assert alias_version(mlflow_client, name, CHAMPION) == version
    # the promoted service was left running, answers as the champion, and is on record
    assert requests.get(f"{decision.active_url}/version", timeout=5).json()["model_version"] == (
        version
    )
    (kept,) = state.running().values()
    assert (kept.name, kept.pid) == ("model-serving-green", decision.active_pid)

    # a run that keeps serving too reuses it: the same process, still on record
    steps: list[str] = []
    again = blue_green(mlflow_client, name, serving_env, tmp_path, state, gate_run_time="4s",
                       keep_serving=True, on_step=steps.append)  # fmt: skip
    assert not again.promoted
    assert "already champion" in again.reason
    assert (again.active_url, again.active_pid) == (decision.active_url, decision.active_pid)
    assert set(state.running()) == {"model-serving-green"}

    # a plain run does not forget it: it stops it (KEEP_SERVING=1, then `make run`)
    plain = blue_green(mlflow_client, name, serving_env, tmp_path, state, gate_run_time="4s",
                       on_step=steps.append)  # fmt: skip
    assert not plain.promoted
    assert plain.active_url is None
    assert "stopped model-serving-green, kept by an earlier run" in steps
    assert not kept.alive
    assert state.running() == {}
    with pytest.raises(requests.RequestException):
        requests.get(f"{decision.active_url}/healthz", timeout=2)
    assert alias_version(mlflow_client, name, CHAMPION) == version


def test_down_stops_a_kept_service(register, serving_env, state, tmp_path) -> None:
    """What `make down` calls first: every serving instance on record is stopped with its
    process group, and the record dropped."""
    version = register(f"{MODEL}-kept")
    record = start_serving("green", ModelReference.at_version(f"{MODEL}-kept", version),
                           serving_env, tmp_path, state)  # fmt: skip
    assert stop_kept_serving(state) == ["model-serving-green"]
    assert not record.alive
    assert not group_members(record.pid)
    assert state.read()["processes"] == {}


def test_a_challenger_failing_analysis_leaves_the_champion(
    register, mlflow_client, serving_env, state, tmp_path, monkeypatch
) -> None:
    import pipeline_ops.promotion as promotion

    name = f"{MODEL}-gate"
    champion = register(name)
    mlflow_client.set_registered_model_alias(name, CHAMPION, champion)
    challenger = register(name)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, challenger)
    impossible = _with_gate_option(load_template(), "--max-p99-ms", "0.001")
    monkeypatch.setattr(promotion, "load_template", lambda: impossible)

    decision = blue_green(mlflow_client, name, serving_env, tmp_path, state, gate_run_time="3s")
    assert not decision.promoted
    assert "load-gate" in decision.reason
    assert (decision.champion_before, decision.champion_after) == (champion, champion)
    assert alias_version(mlflow_client, name, CHAMPION) == champion
    assert state.running() == {}  # blue and green stopped and dropped from the record


def test_a_champion_this_code_cannot_serve_does_not_block_the_challenger(
    local_env, scorer, register, mlflow_client, serving_env, state, tmp_path, monkeypatch
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
        start_serving("blue", ModelReference.at_version(name, champion), serving_env, tmp_path,
                      state, timeout=60)  # fmt: skip
    assert state.running() == {}

    challenger = register(name)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, challenger)
    steps: list[str] = []
    decision = blue_green(mlflow_client, name, serving_env, tmp_path, state, gate_run_time="3s",
                          on_step=steps.append)  # fmt: skip
    assert decision.promoted, decision.reason
    assert "blue could not be served" in decision.reason
    assert any(step.startswith("blue: not served") for step in steps)
    assert alias_version(mlflow_client, name, CHAMPION) == challenger


# -- Ctrl-C: `make run` interrupted while green starts, or during the load gate -------------
# A run of blue/green in a process of its own, as `make run` runs it; the test is its terminal.
BLUE_GREEN = """
import json, sys
from pathlib import Path
from mlflow import MlflowClient
from pipeline_ops.base.processes import StateFile
from pipeline_ops.promotion import blue_green
a = json.loads(sys.argv[1])
blue_green(MlflowClient(a["mlflow"]), a["model"], a["env"], Path(a["work"]),
           StateFile(Path(a["state"])), gate_run_time="60s")
"""
ANALYSIS = """
import json, sys
from pathlib import Path
from pipeline_ops.base.processes import StateFile
from pipeline_contracts.registry import ModelReference
from pipeline_ops.promotion import run_analysis
a = json.loads(sys.argv[1])
run_analysis(a["url"], ModelReference.parse(a["model"]), Path(a["work"]), run_time="60s",
             state=StateFile(Path(a["state"])))
"""


def _started(code: str, arguments: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(arguments)],
                            start_new_session=True)  # fmt: skip


def _ctrl_c(run: subprocess.Popen) -> None:
    """What a terminal does on Ctrl-C: SIGINT to its foreground process group."""
    os.killpg(run.pid, signal.SIGINT)
    run.wait(timeout=90)


def _on_record(state: StateFile, name: str, run: subprocess.Popen) -> processes.ProcessRecord:
    for _ in range(600):
        record = state.records().get(name)
        if record:
            return record
        assert run.poll() is None, f"the run ended (exit {run.returncode}) before {name} started"
        time.sleep(0.1)
    raise AssertionError(f"{name} never started")


def test_ctrl_c_while_green_starts_leaves_no_model_serving(
    register, mlflow_client, serving_env, state, tmp_path
) -> None:
    name = f"{MODEL}-interrupted"
    mlflow_client.set_registered_model_alias(name, CHALLENGER, register(name))
    arguments = {"mlflow": mlflow_client.tracking_uri, "model": name, "env": serving_env,
                 "work": str(tmp_path), "state": str(state.path)}  # fmt: skip
    run = _started(BLUE_GREEN, arguments)
    green = _on_record(state, "model-serving-green", run)  # on record from its start
    assert green.alive

    _ctrl_c(run)

    assert not green.alive
    assert not group_members(green.pid)
    assert state.records() == {}


def test_ctrl_c_during_the_load_gate_leaves_no_locust(green, state, tmp_path) -> None:
    version, instance = green
    model = ModelReference.at_version(MODEL, version).uri
    run = _started(ANALYSIS, {"url": instance.url, "model": model, "work": str(tmp_path),
                              "state": str(state.path)})  # fmt: skip
    gate = _on_record(state, "load-gate", run)
    for _ in range(300):  # until Locust itself runs, in the gate's process group
        if any(b"locust" in cmdline(pid) for pid in group_members(gate.pid) if pid != gate.pid):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"locust never started; the gate's log:\n{gate.log_tail()}")

    _ctrl_c(run)

    assert not gate.alive
    assert not group_members(gate.pid)
    assert state.records() == {}
    assert instance.alive  # what the interrupted run did not start is left alone
