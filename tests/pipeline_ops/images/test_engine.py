"""The project's Docker engine: idempotent start, a killed engine cleaned up by the next
start, and a stop that leaves the host as it found it. (Runs after the image tests: it
kills and stops the shared engine, then starts it again.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline_ops.base.processes import start_ticks as proc_start_ticks
from pipeline_ops.host_sysctls import read_sysctl
from pipeline_ops.images.engine import (
    BRIDGE,
    ContainerEngine,
    forward_policy,
    link_exists,
    processes_mentioning,
)

pytestmark = pytest.mark.images


def test_starting_a_running_engine_keeps_it(engine: ContainerEngine) -> None:
    first = engine.up()
    again = engine.up()
    assert (again.pid, again.start_ticks) == (first.pid, first.start_ticks)
    assert engine.status()["answers"] is True


def test_a_killed_engine_and_its_containers_are_cleaned_up_by_the_next_start(
    engine: ContainerEngine, built
) -> None:
    killed = engine.up()
    container = engine.docker(
        "run", "--detach", "--entrypoint", "sleep", built["load-gate"].reference, "600"
    ).stdout.strip()
    pid = json.loads(engine.docker("inspect", container).stdout)[0]["State"]["Pid"]
    os.kill(killed.pid, signal.SIGKILL)
    time.sleep(1)
    assert engine.running() is None
    assert processes_mentioning(engine.home), "a killed dockerd leaves containerd and shims"
    assert proc_start_ticks(pid) is not None, "and its containers keep running"

    replaced = engine.up()

    assert replaced.pid != killed.pid
    assert engine.answers()
    assert proc_start_ticks(pid) is None, "the orphaned container's process was stopped"
    running = engine.docker("ps", "--quiet", "--no-trunc").stdout.split()
    assert container not in running


def test_stopping_the_engine_restores_the_host(engine: ContainerEngine) -> None:
    engine.up()
    recorded = engine._load()
    assert recorded is not None
    assert link_exists(BRIDGE)

    assert engine.down() is True

    assert not link_exists(BRIDGE)
    for table in ("filter", "nat"):
        rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True)
        assert "DOCKER" not in rules.stdout, table
    assert forward_policy() == recorded.forward_policy
    for name, value in recorded.sysctls.items():
        cluster_bridge = any(
            a.startswith("198.19.")
            for a in subprocess.run(
                ["ip", "-o", "-4", "addr"], capture_output=True, text=True
            ).stdout.split()
        )
        if not cluster_bridge:  # a running local cluster still needs forwarding
            assert read_sysctl(name) == value, name
    assert not processes_mentioning(engine.home)
    assert engine.down() is False  # a second stop is harmless
    engine.up()  # for whatever runs next


def test_a_command_run_with_the_engine_leaves_it_as_it_found_it(engine: ContainerEngine) -> None:
    def with_engine(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pipeline_ops.images", "with-engine", "--", *command],
            capture_output=True,
            text=True,
            env={**os.environ, **engine.env()},
        )

    engine.down()
    stopped = with_engine("docker", "version", "--format", "{{.Server.Version}}")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip(), "the command ran with the engine answering"
    assert engine.running() is None, "and it was stopped after"
    assert not link_exists(BRIDGE), "with its bridge"

    running = engine.up()
    failing = with_engine("sh", "-c", "exit 3")
    assert failing.returncode == 3, "the command's exit code is passed on"
    assert engine.running() == running, "an engine that was running before is left running"
