"""The cluster launcher's failure modes against real components (a real etcd; the running
cluster): a component that will not start is named with its log; a second cluster on the
machine is refused. The ones that need no cluster are in test_components.py."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pipeline_ops.base.errors import ProcessExited
from pipeline_ops.cluster import ClusterError
from pipeline_ops.cluster.components import COMPONENTS
from pipeline_ops.cluster.launcher import Cluster

pytestmark = pytest.mark.cluster


def test_a_component_that_cannot_start_is_named_with_its_log(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    etcd = next(c for c in COMPONENTS if c.name == "etcd")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        state = cluster.state.read()
        cluster.state.write({**state, "ports": {**cluster.ports(), "etcd": taken.getsockname()[1]}})
        with pytest.raises(ProcessExited) as error:
            etcd.up(cluster, timeout=30)
    message = str(error.value)
    assert message.startswith("etcd exited during start")
    assert "address already in use" in message  # the end of etcd's own log
    assert not cluster.state.records()["etcd"].alive


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
