"""The step log, the state directory's lock and the polling helper."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pipeline_ops.base import locks, polling
from pipeline_ops.base.errors import WaitTimeout
from pipeline_ops.base.steps import StepLog


def test_a_failed_step_is_recorded_with_its_reason_and_the_error_goes_on():
    said: list[str] = []
    steps = StepLog(say=said.append)
    with steps.step("fetch") as step:
        step.outcome = "12 inserted"
        step.figures["inserted"] = 12
    with pytest.raises(ValueError, match="no such column"), steps.step("train"):
        raise ValueError("no such column: additions")
    assert [(s.name, s.failed) for s in steps.steps] == [("fetch", False), ("train", True)]
    assert steps.steps[1].outcome == "FAILED: no such column: additions"
    assert said[0] == "==> [1] fetch"
    assert said[1].startswith("<== [1] fetch: ")
    assert said[1].endswith("12 inserted")
    table = steps.table()
    assert "| fetch |" in table
    assert "| train |" in table
    assert "FAILED: no such column: additions" in table


def test_a_second_operator_is_refused_with_the_holders_pid(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pipeline_ops.base import locks\n"
         f"with locks.held(__import__('pathlib').Path({str(tmp_path)!r}), 'run'):\n"
         "    print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        held_by = rf"make run: .* in use by pid {holder.pid}"
        refused = pytest.raises(locks.StateLocked, match=held_by)
        with refused, locks.held(tmp_path, "make run", wait=0.5):
            pass
    finally:
        holder.kill()
        holder.wait()
    with locks.held(tmp_path, "make run", wait=5):  # the kernel freed it with its holder
        pass


def test_wait_until_returns_the_first_truthy_value_or_names_what_it_waited_for():
    values = iter([None, 0, "ready"])
    assert polling.wait_until("the thing", lambda: next(values), 5, every=0.01) == "ready"
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match="waiting for node Ready; last seen: NotReady"):
        polling.wait_until("node Ready", lambda: None, 0.2, every=0.05, seen=lambda: "NotReady")
    assert time.monotonic() - started < 2
