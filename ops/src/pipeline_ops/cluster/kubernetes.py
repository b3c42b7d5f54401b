"""The Kubernetes components on the host: their command lines (what ``components`` starts),
and what ``down`` does around them (pods deleted, containers removed, leftovers killed)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline_ops.base.errors import OpsError, WaitTimeout
from pipeline_ops.base.polling import wait_until
from pipeline_ops.cluster import configs, images
from pipeline_ops.cluster.layout import (
    APISERVER_PORT,
    AUDIT_POLICY,
    BRIDGE_IP,
    CLUSTER_CIDR,
    NODE_NAME,
    SERVICE_CIDR,
    Layout,
    binary,
)

if TYPE_CHECKING:
    from pipeline_ops.cluster.launcher import Cluster

log = logging.getLogger(__name__)


def etcd(cluster: Cluster) -> list[str]:
    ports = cluster.ports()
    peer = f"http://127.0.0.1:{ports['etcd-peer']}"
    client = f"http://127.0.0.1:{ports['etcd']}"
    return [
        str(binary("etcd")), "--name", NODE_NAME, "--data-dir", str(cluster.layout.dir("etcd")),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{NODE_NAME}={peer}", "--log-level", "warn",
    ]  # fmt: skip


def apiserver(cluster: Cluster) -> list[str]:
    pki = cluster.pki
    return [
        str(binary("kube-apiserver")), f"--advertise-address={BRIDGE_IP}",
        f"--bind-address={BRIDGE_IP}", f"--secure-port={APISERVER_PORT}",
        f"--etcd-servers=http://127.0.0.1:{cluster.ports()['etcd']}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
        f"--client-ca-file={pki.ca}",
        f"--tls-cert-file={pki.cert('apiserver')}",
        f"--tls-private-key-file={pki.key('apiserver')}",
        f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
        f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
        f"--kubelet-certificate-authority={pki.ca}",
        # the node's name resolves nowhere: reach the kubelet on the bridge address
        "--kubelet-preferred-address-types=InternalIP",
        f"--service-account-key-file={pki.dir / 'service-account.pub'}",
        f"--service-account-signing-key-file={pki.key('service-account')}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--allow-privileged=true", "--profiling=false", "--v=1",
        # every write by a person (ops/cluster/audit-policy.yaml): the cluster run's witness
        f"--audit-policy-file={AUDIT_POLICY}",
        f"--audit-log-path={cluster.layout.audit_log}",
        "--audit-log-format=json", "--audit-log-maxsize=100", "--audit-log-maxbackup=3",
        # CEL mutation (beta in 1.34, off by default): the node's capacity policy
        "--feature-gates=MutatingAdmissionPolicy=true",
        "--runtime-config=admissionregistration.k8s.io/v1beta1=true",
    ]  # fmt: skip


def _controller(cluster: Cluster, name: str) -> list[str]:
    kubeconfig = str(cluster.layout.component_kubeconfig(name))
    return [
        str(binary(name)), f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}", "--bind-address=127.0.0.1",
        f"--secure-port={cluster.ports()[name]}", "--leader-elect=false", "--profiling=false",
        "--v=1",
    ]  # fmt: skip


def controller_manager(cluster: Cluster) -> list[str]:
    pki = cluster.pki
    return [
        *_controller(cluster, "kube-controller-manager"),
        f"--cluster-cidr={CLUSTER_CIDR}", "--allocate-node-cidrs=true",
        "--node-cidr-mask-size=24", f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--root-ca-file={pki.ca}",
        f"--service-account-private-key-file={pki.key('service-account')}",
        f"--cluster-signing-cert-file={pki.ca}",
        f"--cluster-signing-key-file={pki.key('ca')}",
        "--use-service-account-credentials=true",
    ]  # fmt: skip


def scheduler(cluster: Cluster) -> list[str]:
    return _controller(cluster, "kube-scheduler")


def containerd(cluster: Cluster) -> list[str]:
    configs.cni(cluster.layout)  # before containerd's CRI looks for it
    return ["containerd", "--config", str(configs.containerd(cluster.layout)),
            "--log-level", "warn"]  # fmt: skip


def kubelet(cluster: Cluster) -> list[str]:
    layout = cluster.layout
    config = configs.kubelet(layout, cluster.pki.dir, cluster.ports()["kubelet-healthz"])
    return [
        str(binary("kubelet")), f"--config={config}",
        f"--kubeconfig={layout.component_kubeconfig('kubelet-client')}",
        f"--root-dir={layout.dir('kubelet') / 'root'}", f"--hostname-override={NODE_NAME}",
        f"--node-ip={BRIDGE_IP}", "--v=1",
    ]  # fmt: skip


def kube_proxy(cluster: Cluster) -> list[str]:
    ports = cluster.ports()
    config = configs.kube_proxy(
        cluster.layout, ports["kube-proxy-healthz"], ports["kube-proxy-metrics"]
    )
    return [str(binary("kube-proxy")), f"--config={config}", "--v=1"]


# -- down ------------------------------------------------------------------------------------
def delete_pods(layout: Layout, timeout: float = 30) -> None:
    """Every pod deleted, and up to ``timeout`` for containerd to hold no task."""
    with contextlib.suppress(OpsError):
        layout.kubectl()("delete", "pods", "--all", "--all-namespaces", "--wait=false",
                         "--grace-period=1", timeout=30)  # fmt: skip

    def no_task() -> bool:
        try:
            return not images.ctr(layout, "tasks", "list", "--quiet").split()
        except OpsError:
            return True

    with contextlib.suppress(WaitTimeout):
        wait_until("the pods' containers to stop", no_task, timeout, every=0.5)


def remove_containers(layout: Layout) -> None:
    """Whatever containerd still runs, killed and deleted."""

    def ctr(*args: str) -> str:
        return images.ctr(layout, *args, timeout=30)

    def deleter(task: str) -> Callable[[], bool]:
        def deleted() -> bool:
            try:
                ctr("tasks", "delete", task)
                return True
            except OpsError:
                return False

        return deleted

    with contextlib.suppress(OpsError):
        for task in ctr("tasks", "list", "--quiet").split():
            with contextlib.suppress(OpsError):
                ctr("tasks", "kill", "--signal", "SIGKILL", task)
            with contextlib.suppress(WaitTimeout):
                wait_until(f"task {task} deleted", deleter(task), 5, every=0.25)
        for container in ctr("containers", "list", "--quiet").split():
            with contextlib.suppress(OpsError):
                ctr("containers", "delete", container)


def kill_leftover_pod_processes(layout: Layout) -> None:
    """After a killed run: the pods' processes (in kubelet's kubepods cgroups) and the
    shims of this cluster's containerd (their command line names its socket)."""
    pids: set[int] = set()
    for procs_file in Path("/sys/fs/cgroup/pids").glob("kubepods*/**/cgroup.procs"):
        with contextlib.suppress(OSError):
            pids |= {int(p) for p in procs_file.read_text().split()}
    socket_path = str(layout.containerd_socket)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                if b"containerd-shim" in cmdline[0] and socket_path.encode() in cmdline:
                    pids.add(int(entry.name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            log.info("killed leftover pod process %s", pid)
    if pids:
        time.sleep(1)
