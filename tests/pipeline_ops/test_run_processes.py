"""`make run`'s children, as an operator would notice them: a stage gets the VAULT_* contract
and nothing of the operator's secrets; Ctrl-C during training ends the MLflow run as KILLED
and leaves no process; a second `make run` beside a first is refused at once, naming it; and
every stage of the list is a step of the run, a section of its report and a line of its
summary, in the list's order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from proc_table import children, environ, group_members

from pipeline_contracts.registry import ModelReference
from pipeline_ops import __main__ as cli
from pipeline_ops import report, runner
from pipeline_ops.base import commands
from pipeline_ops.base.errors import CommandError
from pipeline_ops.base.locks import held
from pipeline_ops.base.processes import StateFile, minimal_environment
from pipeline_ops.base.steps import StepLog
from pipeline_ops.promotion import start_serving, stop
from pipeline_ops.stages import STAGE_NAMES

PROJECT_ROOT = Path(__file__).resolve().parents[2]
OPERATOR_SECRETS = {"GITHUB_TOKEN": "ghp_operator_only", "AWS_SECRET_ACCESS_KEY": "operator-only"}


def test_a_stage_started_as_make_run_starts_it_gets_no_operator_secret(
    local_env, register_scorer, tmp_path, monkeypatch
) -> None:
    for name, value in OPERATOR_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VAULT_TOKEN", "the-operators-own")  # not the stage's contract
    monkeypatch.setenv("TRAINING_MAX_EPOCHS", "7")  # a knob README lists: passed on
    model = ModelReference.at_version("env-under-test", register_scorer("env-under-test"))
    state = StateFile(tmp_path / "state.json")

    serving = start_serving("blue", model, runner.stage_process_env(local_env, "model-serving"),
                            tmp_path, state)  # fmt: skip
    try:
        seen = environ(serving.pid)
    finally:
        stop(state, serving)

    assert not set(OPERATOR_SECRETS) & set(seen)
    assert "VAULT_TOKEN" not in seen
    assert seen["VAULT_ROLE"] == "model-serving"
    assert {k for k in seen if k.startswith("VAULT_")} == set(local_env.stage_env("model-serving"))
    assert seen["TRAINING_MAX_EPOCHS"] == "7"
    assert seen["SERVING_MODEL_URI"] == model.uri
    unexpected = set(seen) - {
        *minimal_environment(),
        *local_env.stage_env("model-serving"),
        "SERVING_MODEL_URI", "SPARK_JARS_DIR", "PYSPARK_PYTHON", "SPARK_LOCAL_IP",
        # the settings README lists, as this process has them (pyspark, run in-process by
        # earlier tests, sets SPARK_* of its own)
        *(k for k in os.environ if k.startswith(runner.STAGE_KNOBS)),
    }  # fmt: skip
    assert not unexpected, f"variables a stage should not get: {sorted(unexpected)}"


# -- Ctrl-C during training ----------------------------------------------------------------
TRAINING = """
import json, sys
from pathlib import Path
from pipeline_ops.local_env import LocalEnvironment
from pipeline_ops.local_platform import LocalPlatform
from pipeline_ops.runner import _bin, run_stage_process
a = json.loads(sys.argv[1])
env = LocalEnvironment(LocalPlatform(Path(a["platform"])), Path(a["data"]))
run_stage_process(env, "ml-training", [_bin("ml-training"), "--features-run-id", a["run_id"]])
"""


def test_ctrl_c_during_training_ends_its_mlflow_run_as_killed(
    local_env, read_samples, feature_rows, write_feature_run
) -> None:
    from mlflow import MlflowClient

    run_id = f"interrupted-{uuid.uuid4().hex[:8]}"
    write_feature_run(local_env.data_dir / "features", run_id, feature_rows(read_samples(300)),
                      publish=False)  # fmt: skip
    experiment = f"interrupted-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TRAINING_EXPERIMENT": experiment, "TRAINING_MAX_EPOCHS": "3"}
    arguments = {"platform": str(local_env.platform.state_dir), "data": str(local_env.data_dir),
                 "run_id": run_id}  # fmt: skip
    make_run = subprocess.Popen([sys.executable, "-c", TRAINING, json.dumps(arguments)], env=env,
                                start_new_session=True)  # fmt: skip
    client = MlflowClient(local_env.platform.service("mlflow").url)
    try:
        for _ in range(1200):  # until training has its MLflow run open
            found = client.get_experiment_by_name(experiment)
            runs = client.search_runs([found.experiment_id]) if found else []
            if runs and runs[0].info.status == "RUNNING":
                break
            assert make_run.poll() is None, "training ended before its MLflow run was seen"
            time.sleep(0.1)
        else:
            raise AssertionError("training never opened its MLflow run")
        (training,) = children(make_run.pid)

        os.killpg(make_run.pid, signal.SIGINT)  # Ctrl-C, as a terminal sends it
        make_run.wait(timeout=90)
    finally:
        if make_run.poll() is None:
            os.killpg(make_run.pid, signal.SIGKILL)

    assert client.get_run(runs[0].info.run_id).info.status == "KILLED"
    assert not group_members(training)


# -- two operators ---------------------------------------------------------------------------
def test_a_second_make_run_is_refused_at_once_naming_the_first(tmp_path) -> None:
    """Another `make run` holds the state directory: this one stops before touching it."""
    env = {**os.environ, "PIPELINE_LOCAL_DIR": str(tmp_path)}
    with held(tmp_path / "platform", "make run"):
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "pipeline_ops", "run"], cwd=PROJECT_ROOT,
                                env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        seconds = time.monotonic() - started
    assert second.returncode == 1
    assert f"make run: {tmp_path / 'platform'} is in use by pid {os.getpid()}" in second.stderr
    assert "pytest" in second.stderr  # the holder's command
    assert seconds < 20
    assert not (tmp_path / "platform" / "state.json").exists()  # nothing was started


# -- the stages, listed once -----------------------------------------------------------------
def test_every_stage_is_a_step_a_report_section_and_a_summary_line() -> None:
    steps = runner.PipelineRun(platform=None).stage_steps(env=None)  # type: ignore[arg-type]
    assert list(steps) == list(STAGE_NAMES)
    assert list(report.STAGE_SECTIONS) == list(STAGE_NAMES)
    assert list(cli.STAGE_LINES) == list(STAGE_NAMES)


def test_a_failing_stage_is_named_and_its_step_marked_failed(local_env) -> None:
    log = StepLog()
    argv = [sys.executable, "-c", "import sys; sys.exit(4)"]
    failed = pytest.raises(CommandError, match=r"^data-fetch: `python -c .*` exited 4")
    with failed, log.step("data-fetch"):
        runner.run_stage_process(local_env, "data-fetch", argv)
    assert log.steps[0].failed
    assert "| data-fetch |" in log.table()


def test_a_stage_that_overruns_goes_with_everything_it_started(tmp_path) -> None:
    """A stage's own children (Spark's JVM, say) are in its process group: stopped with it."""
    marker = tmp_path / "child"
    script = ("import subprocess, sys, time; "
              "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(marker)!r}, 'w').write(str(c.pid)); time.sleep(60)")  # fmt: skip
    with pytest.raises(CommandError, match="timed out after 3s"):
        commands.run([sys.executable, "-c", script], what="a stage", timeout=3,
                     own_group=True)  # fmt: skip
    child = int(marker.read_text())
    for _ in range(50):
        if not Path(f"/proc/{child}").exists() or "Z" in _state(child):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the stage's child {child} survived it")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"
