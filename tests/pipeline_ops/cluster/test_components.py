"""The launcher's logic without a cluster, root or the built binaries (the fast suite): the
table walked forward by up and backward by down, a taken port named with its component, a
stale state record recognised and cleaned, and an error of kubectl or ctr that names the
command and shows the end of its stderr. Host processes here are small Python sleepers;
commands go to a fake runner (``base.commands.using``)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline_ops.base import commands
from pipeline_ops.base.errors import TAIL_CHARS, CommandError
from pipeline_ops.base.processes import ProcessRecord, start_ticks
from pipeline_ops.cluster import ClusterError, images
from pipeline_ops.cluster.components import (
    COMPONENTS,
    AddOn,
    Component,
    HostChange,
    HostProcess,
    check_listens_free,
)
from pipeline_ops.cluster.launcher import Cluster
from pipeline_ops.cluster.layout import Layout, binaries

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def change(self, name: str) -> HostChange:
        return HostChange(
            name=name, start=lambda c: self.events.append(f"up {name}"),
            undo=lambda c: self.events.append(f"down {name}"),
        )  # fmt: skip

    def process(self, name: str, **kwargs: Any) -> HostProcess:
        return HostProcess(
            name=name, command=lambda c: SLEEPER, healthy=lambda c: True,
            after_start=lambda c, record, timeout: self.events.append(f"up {name}"),
            before_stop=lambda c, alive: self.events.append(
                f"down {name} ({'alive' if name in alive else 'gone'})"
            ),
            **kwargs,
        )  # fmt: skip

    def add_on(self, name: str, **kwargs: Any) -> AddOn:
        return AddOn(name=name, apply=lambda c, timeout: self.events.append(f"up {name}"),
                     **kwargs)  # fmt: skip


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def _cluster(tmp_path: Path, *components: Component) -> Cluster:
    return Cluster(tmp_path / "cluster", components=components)


def test_up_walks_the_table_forward_and_down_walks_it_backward(
    tmp_path: Path, recorder: Recorder
) -> None:
    cluster = _cluster(
        tmp_path, recorder.change("host"), recorder.process("etcd", ports=("etcd",)),
        recorder.process("kube-apiserver"), recorder.add_on("coredns"),
        recorder.add_on("never", enabled=lambda: False, disabled="not on this kernel"),
    )  # fmt: skip
    timings = cluster.up(timeout=10)
    assert recorder.events == ["up host", "up etcd", "up kube-apiserver", "up coredns"]
    assert list(timings) == ["host", "etcd", "kube-apiserver", "coredns", "total"]
    assert cluster.phase == "up"
    assert set(cluster.ports()) == {"etcd"}
    records = cluster.state.records()
    assert [r.alive for r in records.values()] == [True, True]
    status = cluster.status()
    assert status["etcd"]["healthy"]
    assert status["kube-apiserver"]["healthy"]
    assert status["etcd"]["pid"] == records["etcd"].pid

    assert cluster.up() == {}  # up and healthy: left as it is
    assert cluster.state.records() == records

    recorder.events.clear()
    assert cluster.down() == ["kube-apiserver", "etcd"]
    assert recorder.events == [
        "down kube-apiserver (alive)", "down etcd (alive)", "down host",
    ]  # fmt: skip
    assert not any(r.alive for r in records.values())
    assert not cluster.layout.state_file.exists()


def test_a_failed_component_stops_the_walk_and_the_next_up_cleans_up(
    tmp_path: Path, recorder: Recorder
) -> None:
    def broken(cluster: Cluster, timeout: float) -> None:
        raise ClusterError("coredns did not become ready")

    cluster = _cluster(tmp_path, recorder.process("etcd"), AddOn(name="coredns", apply=broken),
                       recorder.add_on("argo-cd"))  # fmt: skip
    with pytest.raises(ClusterError, match="coredns did not become ready"):
        cluster.up(timeout=10)
    assert recorder.events == ["up etcd"]
    assert cluster.phase == "starting"
    etcd = cluster.state.records()["etcd"]
    assert etcd.alive

    fixed = _cluster(tmp_path, recorder.process("etcd"), recorder.add_on("coredns"))
    fixed.up(timeout=10)
    assert not etcd.alive  # the half-started cluster was stopped first
    assert recorder.events[1:] == ["down etcd (alive)", "up etcd", "up coredns"]
    fixed.down()


def test_a_taken_port_is_named_with_its_component_and_what_to_do(
    tmp_path: Path, recorder: Recorder
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        apiserver = recorder.process("kube-apiserver", listens=(("127.0.0.1", port),))
        host = HostChange(name="host", start=lambda c: check_listens_free(c.components))
        cluster = _cluster(tmp_path, host, apiserver)
        with pytest.raises(ClusterError) as error:
            cluster.up(timeout=10)
    message = str(error.value)
    assert message.startswith(f"kube-apiserver: 127.0.0.1:{port} is taken by another program")
    assert message.endswith("stop it or run `make cluster-down`")
    assert "kube-apiserver" not in cluster.state.records()  # nothing was started
    cluster.down()


def test_every_fixed_address_of_the_real_table_is_checked() -> None:
    listens = {c.name: c.listens for c in COMPONENTS if isinstance(c, HostProcess) and c.listens}
    assert set(listens) == {
        "registry",
        "project-registry",
        "git-daemon",
        "github-contents",
        "kube-apiserver",
        "kubelet",
    }
    names = [c.name for c in COMPONENTS]
    assert len(names) == len(set(names))
    # down deletes the pods (kubelet's before_stop) after the controllers stopped
    assert names.index("kube-controller-manager") > names.index("kubelet")
    assert names.index("kube-scheduler") > names.index("kubelet")


def test_a_stale_record_is_recognised_never_signalled_and_cleaned(
    tmp_path: Path, recorder: Recorder
) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    ticks = start_ticks(finished.pid)
    finished.wait()
    bystander = subprocess.Popen(SLEEPER)
    try:
        cluster = _cluster(tmp_path, recorder.process("etcd"), recorder.process("kube-apiserver"))
        cluster.state.write({"phase": "starting"})
        cluster.state.add(ProcessRecord("etcd", finished.pid, ticks, ["etcd"], "etcd.log"))
        # a live pid with other start ticks: a recycled pid, not our kube-apiserver
        recycled = (start_ticks(bystander.pid) or 0) + 1
        cluster.state.add(ProcessRecord("kube-apiserver", bystander.pid, recycled,
                                        ["kube-apiserver"], "x"))  # fmt: skip
        status = cluster.status()
        assert not status["etcd"]["running"]
        assert not status["kube-apiserver"]["running"]

        cluster.up(timeout=10)  # cleans the stale state first, then starts
        assert bystander.poll() is None  # the bystander lives
        assert recorder.events[:2] == ["down kube-apiserver (gone)", "down etcd (gone)"]
        records = cluster.state.records()
        assert records["kube-apiserver"].pid != bystander.pid
        assert all(r.alive for r in records.values())
        assert cluster.down() == ["kube-apiserver", "etcd"]
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


class FailingRunner(commands.CommandRunner):
    """Every command fails with a long stderr whose end says what went wrong."""

    def __init__(self, last_words: str) -> None:
        self.last_words = last_words
        self.argv: list[str] = []

    def run(self, argv, *, stdin, env, cwd, timeout, text, capture_stdout, capture_stderr):
        self.argv = [str(a) for a in argv]
        stderr = "noise " * 2000 + self.last_words
        return subprocess.CompletedProcess(
            argv, 1, "" if text else b"", stderr if text else stderr.encode()
        )


@pytest.fixture
def built_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Layout:
    """A layout whose binaries exist (as empty files): nothing here runs them."""
    monkeypatch.setenv("PR_ANOMALY_CACHE", str(tmp_path / "cache"))
    for entry in binaries().values():
        entry.path.parent.mkdir(parents=True, exist_ok=True)
        entry.path.touch()
    return Layout(tmp_path / "cluster")


def test_a_kubectl_error_names_the_command_and_shows_the_end_of_its_stderr(
    built_layout: Layout,
) -> None:
    runner = FailingRunner('Error from server (NotFound): pods "web" not found')
    with commands.using(runner), pytest.raises(CommandError) as error:
        built_layout.kubectl().get("mlops", "pod", "web")
    message = str(error.value)
    assert message.startswith("kubectl: `kubectl-v1.34.3 --kubeconfig")
    assert "-n mlops get pod web -o json` exited 1" in message
    assert message.endswith('pods "web" not found')
    assert len(message) < TAIL_CHARS + 500  # the tail, not the whole stderr
    assert runner.argv[:3] == [str(built_layout.kubectl().binary), "--kubeconfig",
                               str(built_layout.kubeconfig)]  # fmt: skip


def test_the_rollouts_plugin_is_called_through_the_same_client(built_layout: Layout) -> None:
    runner = FailingRunner("rollout 'model-serving' not found")
    with commands.using(runner), pytest.raises(CommandError) as error:
        built_layout.kubectl().rollouts("mlops", "promote", "model-serving")
    assert str(error.value).startswith("kubectl argo rollouts: `kubectl-argo-rollouts-")
    assert str(error.value).endswith("rollout 'model-serving' not found")
    assert runner.argv[-4:] == ["-n", "mlops", "promote", "model-serving"]


def test_a_ctr_error_names_the_command_and_shows_the_end_of_its_stderr(tmp_path: Path) -> None:
    runner = FailingRunner("ctr: failed to dial: connection refused")
    with commands.using(runner), pytest.raises(CommandError) as error:
        images.ctr(Layout(tmp_path), "tasks", "list", "--quiet")
    message = str(error.value)
    assert message.startswith("ctr (the cluster's containerd): `ctr --address")
    assert "--namespace k8s.io tasks list --quiet` exited 1" in message
    assert message.endswith("connection refused")
