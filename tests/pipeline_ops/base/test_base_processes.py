"""The supervisor: start with an explicit environment, wait, stop by pid, stale records."""

from __future__ import annotations

import os
import sys
import time

import pytest

from pipeline_ops.base import processes
from pipeline_ops.base.errors import ProcessExited, WaitTimeout

SHOW_ENV = "import time, os; print(sorted(os.environ), flush=True); time.sleep(60)"
SLEEPER = [sys.executable, "-c", SHOW_ENV]


def test_a_child_gets_only_the_minimal_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_not_for_children")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-children")
    env = processes.minimal_environment({"VAULT_ROLE": "data-fetch"})
    record = processes.start("sleeper", SLEEPER, log_file=tmp_path / "s.log", env=env)
    try:
        processes.wait_healthy(record, lambda: "VAULT_ROLE" in record.log_tail(), 20)
        seen = record.log_tail()
        assert "GITHUB_TOKEN" not in seen
        assert "AWS_SECRET_ACCESS_KEY" not in seen
        assert "'PATH'" in seen
    finally:
        processes.stop(record)


def test_stop_ends_the_whole_process_group(tmp_path):
    # a server that starts a child of its own: the child must go with it
    script = ("import subprocess, sys, time; "
              "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print(c.pid, flush=True); time.sleep(60)")  # fmt: skip
    record = processes.start("parent", [sys.executable, "-c", script], log_file=tmp_path / "p.log",
                             env=processes.minimal_environment())  # fmt: skip
    processes.wait_healthy(record, lambda: record.log_tail().strip().isdigit(), 20)
    child = int(record.log_tail().strip())
    assert processes.stop(record, timeout=10)
    for _ in range(50):
        if processes.start_ticks(child) is None:
            break
        time.sleep(0.1)
    assert processes.start_ticks(child) is None
    assert not record.alive


def test_a_process_that_dies_during_start_is_reported_with_its_log(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('bad flag --x'); sys.exit(2)"]
    record = processes.start("broken", argv, log_file=tmp_path / "b.log",
                             env=processes.minimal_environment())  # fmt: skip
    with pytest.raises(ProcessExited, match=r"(?s)broken exited during start .*bad flag --x"):
        processes.wait_healthy(record, lambda: False, 20)


def test_a_process_that_never_gets_healthy_times_out_by_name(tmp_path):
    record = processes.start("slow", SLEEPER, log_file=tmp_path / "slow.log",
                             env=processes.minimal_environment())  # fmt: skip
    try:
        with pytest.raises(WaitTimeout, match="slow not listening after 1s"):
            processes.wait_healthy(record, lambda: False, 1, what="listening")
    finally:
        processes.stop(record)


def test_a_record_of_a_gone_or_reused_pid_is_stale_and_never_signalled(tmp_path):
    state = processes.StateFile(tmp_path / "state.json")
    mine = processes.ProcessRecord("me", os.getpid(), processes.start_ticks(os.getpid()), [], "")
    reused = processes.ProcessRecord("reused", os.getpid(), 1, [], "")  # other start ticks
    state.save_records({"me": mine, "reused": reused})
    state.write({**state.read(), "phase": "up"})
    assert set(state.running()) == {"me"}
    assert set(state.records()) == {"me"}
    assert state.read()["phase"] == "up"  # what the owner keeps beside the records stays
    assert processes.stop(reused) is False
