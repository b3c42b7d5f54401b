"""The cluster as an ordered table of components, one entry each (kind's one action per step):
``up`` walks ``COMPONENTS`` forward, ``down`` walks it backward.

Three kinds of entry:

- ``HostChange``: something done to this machine or the state directory (the certificates,
  the host's bridge and sysctls), with how it is undone;
- ``HostProcess``: a server on the host, started with an explicit environment, recorded in
  the state file, waited on until healthy, then any action after its start (containerd's
  image import, the kubelet's node Ready); stopped by pid, after any action before its stop
  (the kubelet's pods deleted while it can still tear their sandboxes down);
- ``AddOn``: something applied in the cluster with kubectl, and waited on.

Each entry names what it needs (binaries of ``ops/cluster/binaries.tsv``, Debian's tools, its
images FROM scratch, fixed addresses that must be free, loopback ports chosen free at the
first start), so the checks before ``up`` and the ports are read off the table. Adding or
swapping a component is one entry here plus its own module.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import requests
import urllib3

from pipeline_ops.base import processes
from pipeline_ops.base.errors import OpsError
from pipeline_ops.base.processes import ProcessRecord
from pipeline_ops.cluster import (
    ClusterError,
    access,
    addons,
    argo_cd,
    configs,
    git_server,
    gitops,
    images,
    kubernetes,
    monitoring,
    registry,
    spark_operator,
)
from pipeline_ops.cluster.images import ScratchImage
from pipeline_ops.cluster.layout import (
    APISERVER_PORT,
    BRIDGE_IP,
    ENVIRONMENT_NAMESPACES,
    GIT_PORT,
    GITHUB_CONTENTS_PORT,
    KUBELET_PORT,
    PROJECT_REGISTRY,
    REGISTRY,
)

if TYPE_CHECKING:
    from pipeline_ops.cluster.launcher import Cluster

log = logging.getLogger(__name__)

Alive = Mapping[str, ProcessRecord]


@dataclass(frozen=True, kw_only=True)
class Component:
    name: str
    binaries: tuple[str, ...] = ()  # ops/cluster/binaries.tsv
    tools: tuple[str, ...] = ()  # Debian's, on PATH (`make cluster-packages`)
    images: tuple[ScratchImage, ...] = ()  # imported into containerd when it starts
    ports: tuple[str, ...] = ()  # on loopback, chosen free at the first start (Cluster.ports)
    run_state: tuple[str, ...] = ()  # under the state directory, wiped by down
    check: Callable[[], object] | None = None  # raises, saying what to install, if unmet

    def up(self, cluster: Cluster, timeout: float) -> None:
        raise NotImplementedError

    def down(self, cluster: Cluster, alive: Alive) -> list[str]:
        """What was stopped or undone, for ``down``'s answer."""
        return []


@dataclass(frozen=True, kw_only=True)
class HostChange(Component):
    start: Callable[[Cluster], object]
    undo: Callable[[Cluster], object] | None = None
    refresh: Callable[[Cluster], object] | None = None  # when the cluster is found up

    def up(self, cluster: Cluster, timeout: float) -> None:
        self.start(cluster)

    def down(self, cluster: Cluster, alive: Alive) -> list[str]:
        if self.undo is not None:
            self.undo(cluster)
        return []


@dataclass(frozen=True, kw_only=True)
class HostProcess(Component):
    command: Callable[[Cluster], list[str]]  # may write its configuration first
    healthy: Callable[[Cluster], bool]
    listens: tuple[tuple[str, int], ...] = ()  # fixed addresses, checked free before up
    after_start: Callable[[Cluster, ProcessRecord, float], object] | None = None
    before_stop: Callable[[Cluster, Alive], object] | None = None

    def up(self, cluster: Cluster, timeout: float) -> None:
        layout = cluster.layout
        record = processes.start(
            self.name, self.command(cluster), log_file=layout.logs / f"{self.name}.log",
            env=processes.minimal_environment(), cwd=layout.root,
        )  # fmt: skip
        layout.state.add(record)
        processes.wait_healthy(record, lambda: self.healthy(cluster), timeout)
        if self.after_start is not None:
            self.after_start(cluster, record, timeout)

    def down(self, cluster: Cluster, alive: Alive) -> list[str]:
        if self.before_stop is not None:
            self.before_stop(cluster, alive)
        record = cluster.layout.state.remove(self.name)
        return [self.name] if record is not None and processes.stop(record) else []


@dataclass(frozen=True, kw_only=True)
class AddOn(Component):
    apply: Callable[[Cluster, float], object]
    enabled: Callable[[], bool] = lambda: True
    disabled: str = ""  # the warning when not enabled

    def up(self, cluster: Cluster, timeout: float) -> None:
        self.apply(cluster, timeout)


# -- health checks ---------------------------------------------------------------------------
def _get(url: str, **kwargs) -> requests.Response | None:
    """GET for a health check. The controller-manager and scheduler serve /healthz on
    127.0.0.1 with certificates they sign themselves, hence verify=False for those two."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            return requests.get(url, timeout=2, **kwargs)
    except requests.RequestException:
        return None


def answers(url: str, body: str | None = None, **kwargs) -> bool:
    response = _get(url, **kwargs)
    return (
        response is not None
        and response.status_code == 200
        and (body is None or body in response.text)
    )


def listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def port_free(address: str, port: int, component: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as error:
            raise ClusterError(
                f"{component}: {address}:{port} is taken by another program ({error}); "
                "stop it or run `make cluster-down`"
            ) from error


def _local(cluster: Cluster, port: str, path: str = "/healthz", scheme: str = "http") -> bool:
    return answers(f"{scheme}://127.0.0.1:{cluster.ports()[port]}{path}", verify=False)


def _root() -> None:
    if os.geteuid() != 0:
        raise ClusterError("the cluster needs root (network namespaces, iptables, mounts)")


# -- what some components do beside starting ---------------------------------------------------
def _prepare_host(cluster: Cluster) -> None:
    """The host's changes, then every fixed address the components bind checked free (the
    bridge's address exists from here on)."""
    cluster.host.prepare()
    check_listens_free(cluster.components)


def check_listens_free(components: tuple[Component, ...]) -> None:
    for component in components:
        if isinstance(component, HostProcess):
            for address, port in component.listens:
                port_free(address, port, component.name)


def _undo_host(cluster: Cluster) -> None:
    if cluster.host.record_file.exists():  # this run changed the host: it may have pods
        kubernetes.kill_leftover_pod_processes(cluster.layout)
    for line in cluster.host.restore():
        log.info("undone: %s", line)


def _import_images(cluster: Cluster, record: ProcessRecord, timeout: float) -> None:
    wanted = [image for c in cluster.components for image in c.images]
    imported = images.ensure_imported(cluster.layout, wanted)
    if imported:
        log.info("imported images %s", ", ".join(imported))


def _remove_containers(cluster: Cluster, alive: Alive) -> None:
    if "containerd" in alive:
        kubernetes.remove_containers(cluster.layout)


def _node_ready(cluster: Cluster, record: ProcessRecord, timeout: float) -> None:
    processes.wait_healthy(record, cluster.node_ready, timeout, what="Ready")


def _delete_pods(cluster: Cluster, alive: Alive) -> None:
    """Every pod, while the API server and the kubelet run (the controllers, later in the
    table, are stopped already and recreate none): the kubelet tears their sandboxes down."""
    if {"kube-apiserver", "kubelet"} <= alive.keys():
        kubernetes.delete_pods(cluster.layout)


def _sync_git(cluster: Cluster) -> list[str]:
    branches = git_server.sync_project(cluster.layout)
    log.info("git server: %s holds %s", git_server.PROJECT_REPOSITORY, " ".join(branches))
    return git_server.command(cluster.layout)


def _spark_operator_apply(cluster: Cluster, timeout: float) -> None:
    spark_operator.apply(cluster.layout)
    # a Docker engine started (and stopped) meanwhile to build images changes FORWARD
    cluster.host.accept_bridge_forwarding()


def _network_policies(cluster: Cluster, timeout: float) -> None:
    addons.apply_network_policies(
        cluster.layout, cluster.ports()["kube-network-policies-metrics"], timeout
    )
    cluster.host.queue_pod_connections(addons.NETWORK_POLICIES_QUEUE)


def _containerd_prerequisites() -> None:
    configs.cni_bin_dir()
    configs.runc()


def _containerd_ok(cluster: Cluster) -> bool:
    try:
        images.ctr(cluster.layout, "version", timeout=10)
        return True
    except OpsError:
        return False


def _apiserver_ok(cluster: Cluster) -> bool:
    pki = cluster.pki
    admin = (str(pki.cert("admin")), str(pki.key("admin")))
    return answers(f"{cluster.layout.apiserver_url}/readyz", cert=admin, verify=str(pki.ca))


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.split(":")
    return host, int(port)


# -- the table ---------------------------------------------------------------------------------
COMPONENTS: tuple[Component, ...] = (
    HostChange(name="certificates", tools=("openssl",), start=lambda c: c.pki.ensure()),
    HostChange(name="host", tools=("iptables", "ip"), check=_root, start=_prepare_host,
               undo=_undo_host, refresh=lambda c: c.host.accept_bridge_forwarding()),
    HostProcess(name="registry", binaries=("registry",), listens=(_host_port(REGISTRY),),
                command=lambda c: registry.command(c.layout),
                healthy=lambda c: answers(f"http://{REGISTRY}/v2/")),
    # the project's images: private, every push and pull with a login (registry.py)
    HostProcess(name="project-registry", binaries=("registry",), tools=("htpasswd",),
                listens=(_host_port(PROJECT_REGISTRY),),
                command=lambda c: registry.project_command(c.layout),
                healthy=lambda c: answers(f"http://{PROJECT_REGISTRY}/v2/",
                                          auth=registry.login(c.layout, "cluster"))),
    HostProcess(name="git-daemon", tools=("git",), listens=((BRIDGE_IP, GIT_PORT),),
                command=_sync_git, healthy=lambda c: listening(BRIDGE_IP, GIT_PORT)),
    HostProcess(name="github-contents", tools=("git",),
                listens=((BRIDGE_IP, GITHUB_CONTENTS_PORT),),
                command=lambda c: git_server.contents_command(c.layout),
                healthy=lambda c: listening(BRIDGE_IP, GITHUB_CONTENTS_PORT)),
    HostProcess(name="etcd", binaries=("etcd",), ports=("etcd", "etcd-peer"),
                run_state=("etcd",), command=kubernetes.etcd,
                healthy=lambda c: answers(f"http://127.0.0.1:{c.ports()['etcd']}/health",
                                          '"true"')),
    HostProcess(name="kube-apiserver", binaries=("kube-apiserver", "kubectl"),
                listens=((BRIDGE_IP, APISERVER_PORT),), command=kubernetes.apiserver,
                healthy=_apiserver_ok),
    HostProcess(name="containerd", tools=("containerd", "ctr"), images=(addons.PAUSE,),
                check=_containerd_prerequisites, run_state=("cni", "containerd/state"),
                command=kubernetes.containerd, healthy=_containerd_ok,
                after_start=_import_images, before_stop=_remove_containers),
    HostProcess(name="kubelet", binaries=("kubelet",), ports=("kubelet-healthz",),
                listens=((BRIDGE_IP, KUBELET_PORT),), run_state=("kubelet",),
                command=kubernetes.kubelet, healthy=lambda c: _local(c, "kubelet-healthz"),
                after_start=_node_ready, before_stop=_delete_pods),
    HostProcess(name="kube-proxy", binaries=("kube-proxy",),
                ports=("kube-proxy-healthz", "kube-proxy-metrics"), run_state=("kube-proxy",),
                command=kubernetes.kube_proxy,
                healthy=lambda c: _local(c, "kube-proxy-healthz")),
    # The controllers after the node, so that down stops them before it deletes the pods
    # (their ReplicaSets would be recreated).
    HostProcess(name="kube-controller-manager", binaries=("kube-controller-manager",),
                ports=("kube-controller-manager",), command=kubernetes.controller_manager,
                healthy=lambda c: _local(c, "kube-controller-manager", scheme="https")),
    HostProcess(name="kube-scheduler", binaries=("kube-scheduler",), ports=("kube-scheduler",),
                command=kubernetes.scheduler,
                healthy=lambda c: _local(c, "kube-scheduler", scheme="https")),
    AddOn(name="coredns", images=(addons.COREDNS,),
          apply=lambda c, timeout: addons.apply_coredns(c.layout, timeout)),
    # The Prometheus Operator's pods, then Prometheus' and Alertmanager's, start while the
    # add-ons below are applied and waited on; `monitoring` waits for them, before any
    # Rollout's analysis can query Prometheus.
    AddOn(name="monitoring apply", images=monitoring.IMAGES,
          apply=lambda c, _: monitoring.apply(c.layout)),
    AddOn(name="capacity policy",
          apply=lambda c, _: addons.apply_capacity_policy(c.layout, ENVIRONMENT_NAMESPACES)),
    # Argo CD's and the Spark Operator's pods start while the Rollouts controller is waited
    # on (their images come from the registry; built and pushed when missing).
    AddOn(name="argo-cd apply", binaries=("argocd",), apply=lambda c, _: argo_cd.apply(c.layout)),
    AddOn(name="spark-operator apply", binaries=("spark-operator",), apply=_spark_operator_apply),
    AddOn(name="argo-rollouts", binaries=("kubectl-argo-rollouts",), images=(addons.ARGO_ROLLOUTS,),
          apply=lambda c, timeout: addons.apply_argo_rollouts(c.layout, timeout)),
    AddOn(name="monitoring", apply=lambda c, timeout: monitoring.wait(c.layout, timeout)),
    AddOn(name="argo-cd", apply=lambda c, timeout: argo_cd.wait(c.layout, timeout)),
    # what an administrator does once Argo CD runs: its clusters, the ML team's access
    AddOn(name="argo-cd clusters", apply=lambda c, _: gitops.register_clusters(c.layout)),
    AddOn(name="user access", apply=lambda c, _: access.apply(c.layout)),
    # what the administrator gives the pipeline's namespaces to pull its images with
    AddOn(name="registry pull secret", apply=lambda c, _: registry.apply_pull_secrets(c.layout)),
    AddOn(name="spark-operator", apply=lambda c, timeout: spark_operator.wait(c.layout, timeout)),
    # NetworkPolicies enforced: kube-network-policies decides, the host's iptables hand it
    # the pods' new connections (Host.queue_pod_connections: this kernel has no nftables
    # `queue`); last, so that nothing above waits on a verdict while it starts.
    AddOn(name="kube-network-policies", images=(addons.NETWORK_POLICIES,),
          ports=("kube-network-policies-metrics",), apply=_network_policies),
)  # fmt: skip


def check_prerequisites(components: tuple[Component, ...], binary: Callable[[str], Path]) -> None:
    """Every binary, tool and check the table names, before anything starts."""
    for component in components:
        for name in (*component.binaries, *(image.binary for image in component.images)):
            binary(name)
        for tool in component.tools:
            if not shutil.which(tool):
                raise ClusterError(
                    f"{component.name}: {tool} is not installed; run `make cluster-packages`"
                )
        if component.check is not None:
            component.check()
