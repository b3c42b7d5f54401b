"""The cluster launcher's failure modes, each with a clear error (real etcd, no cluster):
a component that will not start, a port taken, a stale state file from a killed run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_ops.cluster import ClusterError
from pipeline_ops.cluster.launcher import Cluster
from pipeline_ops.cluster.processes import Process
from pipeline_ops.local_platform import proc_start_ticks

pytestmark = pytest.mark.cluster


def test_a_component_that_cannot_start_is_named_with_its_log(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = cluster._ports()
        ports["etcd"] = taken.getsockname()[1]
        (tmp_path / "ports").write_text("".join(f"{k}={v}\n" for k, v in ports.items()))
        with pytest.raises(ClusterError) as error:
            cluster._start("etcd", timeout=30)
    message = str(error.value)
    assert message.startswith("etcd exited during start")
    assert "address already in use" in message  # the end of etcd's own log
    assert not cluster.processes.load()[0]["etcd"].alive


def test_a_taken_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(ClusterError, match=rf"kube-apiserver: 127.0.0.1:{port} is taken"):
            Cluster(tmp_path)._check_port_free("127.0.0.1", port, "kube-apiserver")


def test_a_stale_state_file_is_recognised_and_cleaned(tmp_path: Path) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    ticks = proc_start_ticks(finished.pid)
    finished.wait()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        records = {
            "etcd": Process("etcd", finished.pid, ["etcd"], str(tmp_path / "etcd.log"), ticks),
            # a live pid with other start ticks: a recycled pid, not our kube-apiserver
            "kube-apiserver": Process(
                "kube-apiserver", bystander.pid, ["kube-apiserver"], "x",
                (proc_start_ticks(bystander.pid) or 0) + 1,
            ),
        }  # fmt: skip
        cluster = Cluster(tmp_path)
        cluster.processes.save(records, "starting")
        status = cluster.status()
        assert not status["etcd"]["running"]
        assert not status["kube-apiserver"]["running"]
        assert cluster.down() == []  # nothing of ours was alive: nothing killed
        assert bystander.poll() is None  # the bystander lives
        assert not cluster.layout.state_file.exists()
    finally:
        bystander.kill()
        bystander.wait()
    assert json.loads(json.dumps(status))  # status is plain data


def test_a_second_cluster_on_the_same_machine_is_refused_before_it_changes_anything(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Another clone's `make cluster-up` while this cluster runs: refused, naming the fix, with
    nothing of the running cluster touched."""
    other = Cluster(tmp_path)
    with pytest.raises(ClusterError, match=r"another cluster .* its own `make cluster-down`"):
        other.up()
    assert not other.host.record_file.exists()  # it changed nothing on the host
    assert cluster.status()["kube-apiserver"]["healthy"]
    other.down()  # cleaning the refused attempt leaves the running cluster alone
    assert cluster.status()["kubelet"]["healthy"]
