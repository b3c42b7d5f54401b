"""Where everything is: pinned binaries, networks, ports and the state directory.

The cluster owns 198.19.0.0/16 and nothing else (the Docker engine has 198.18.0.0/16):
pods 198.19.0.0/17 with this node's bridge 198.19.0.1/24, Services 198.19.128.0/20.
Host servers bind 127.0.0.1, or the bridge address where pods must reach them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline_ops.base.kubectl import Kubectl
from pipeline_ops.base.processes import StateFile
from pipeline_ops.cluster import ClusterError
from pipeline_ops.paths import LOCAL_DIR, PROJECT_ROOT

BINARIES_TABLE = PROJECT_ROOT / "ops" / "cluster" / "binaries.tsv"
AUDIT_POLICY = PROJECT_ROOT / "ops" / "cluster" / "audit-policy.yaml"

NODE_NAME = "pr-anomaly"
CLUSTER_CIDR = "198.19.0.0/17"
NODE_POD_CIDR = "198.19.0.0/24"
BRIDGE = "pra-cni0"
BRIDGE_IP = "198.19.0.1"
SERVICE_CIDR = "198.19.128.0/20"
KUBERNETES_SERVICE_IP = "198.19.128.1"
DNS_SERVICE_IP = "198.19.128.10"
CLUSTER_DOMAIN = "cluster.local"
APISERVER_PORT = 6443
KUBELET_PORT = 10250
# The cluster's image registry (distribution), on loopback: docker pushes to it as a trusted
# localhost registry, and containerd (on the host's network) pulls from it over plain HTTP.
REGISTRY = "127.0.0.1:5000"
# The project's own images' registry, private as GHCR's or DigitalOcean's is: every push and
# every pull authenticated (distribution's htpasswd). The workflows' stand-in pushes with the
# CI's login; the kubelet pulls with the namespaces' pull secret (registry.PULL_SECRET). The
# add-ons' images (Argo CD, CoreDNS, ...) stay on REGISTRY, as a managed cluster's system
# images come from its provider.
PROJECT_REGISTRY = "127.0.0.1:5001"
# The git server Argo CD reads (git daemon), on the bridge address: pods reach it, nothing else.
GIT_PORT = 9418
# GitHub's contents API for that repository (our stand-in, github_contents_server): the one
# way a delivered component (model-pin) writes git, with a token; also on the bridge address.
GITHUB_CONTENTS_PORT = 9419
# The monitoring stack (monitoring.py) runs in the cluster; the host reaches its Services by
# cluster IP (kube-proxy's rules apply to the host's own traffic too). These Services get
# fixed addresses from the range's static band (its first 256), as kube-dns has, so that the
# host's helpers (prometheus.url()) need no lookup. Pods use the names.
PROMETHEUS_SERVICE_IP = "198.19.128.90"  # prometheus-k8s.monitoring.svc
PROMETHEUS_PORT = 9090
ALERTMANAGER_SERVICE_IP = "198.19.128.93"  # alertmanager-main.monitoring.svc
ALERTMANAGER_PORT = 9093
ALERT_RECEIVER_SERVICE_IP = "198.19.128.94"  # alert-receiver.monitoring.svc
ALERT_RECEIVER_PORT = 8080
# The environments: staging in the namespace the manifests name; production, on this one
# machine, in a second namespace of the same cluster (gitops.py says how).
STAGING_NAMESPACE = "mlops"
PRODUCTION_NAMESPACE = "mlops-production"
ENVIRONMENT_NAMESPACES = (STAGING_NAMESPACE, PRODUCTION_NAMESPACE)
# The user the cluster run acts as (its own certificate and kubeconfig), in the group that
# argo-apps/access grants a user's actions; the API server's audit log records its writes.
USER = "pr-anomaly-user"
USERS_GROUP = "pr-anomaly-mlops-users"
ADMIN = "pr-anomaly-admin"
# Distinguishes the rules this cluster adds to chains it does not own (DOCKER-USER).
RULE_COMMENT = "pr-anomaly-cluster"


def cache_dir() -> Path:
    return Path(os.environ.get("PR_ANOMALY_CACHE", Path.home() / ".cache" / "pr-anomaly"))


@dataclass(frozen=True)
class Binary:
    name: str
    version: str

    @property
    def path(self) -> Path:
        return cache_dir() / "cluster" / "bin" / f"{self.name}-{self.version}"


def binaries() -> dict[str, Binary]:
    rows = (
        line.split("\t")
        for line in BINARIES_TABLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {row[0]: Binary(row[0], row[1]) for row in rows}


def binary(name: str) -> Path:
    path = binaries()[name].path
    if not path.exists():
        raise ClusterError(f"{name}: {path} is not built; run `make cluster-binaries`")
    return path


class Layout:
    """The cluster's files under one state directory (default ``.local/cluster``)."""

    def __init__(self, state_dir: Path | None = None, identity: str = "admin"):
        self.root = Path(state_dir or LOCAL_DIR / "cluster").absolute()
        self.identity = identity  # whose kubeconfig kubectl() uses: pki's identity names
        self._kubectl: Kubectl | None = None

    def acting_as(self, identity: str) -> Layout:
        """The same cluster, its client under ``identity`` (``user``: the cluster run)."""
        return Layout(self.root, identity)

    def kubectl(self) -> Kubectl:
        """The one client of this cluster's API server: the kubeconfig of this layout's
        identity (the admin's unless ``acting_as``), the built kubectl, and the Argo Rollouts
        plugin if it is built."""
        if self._kubectl is None:
            plugin = binaries()["kubectl-argo-rollouts"].path
            found = plugin if plugin.exists() else None
            self._kubectl = Kubectl(self.kubeconfig_of(self.identity), binary("kubectl"), found)
        return self._kubectl

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def state(self) -> StateFile:
        """The host processes' records, with the phase (``starting``, ``up``) and the ports
        chosen at start beside them."""
        return StateFile(self.state_file)

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (ops/cluster/audit-policy.yaml says what it records)."""
        return self.logs / "audit.log"

    @property
    def kubeconfig(self) -> Path:
        """The admin's kubeconfig: what `make cluster-env` points KUBECONFIG at."""
        return self.root / "kubeconfig"

    def component_kubeconfig(self, name: str) -> Path:
        return self.pki / f"{name}.kubeconfig"

    def kubeconfig_of(self, identity: str) -> Path:
        """Where pki writes ``identity``'s kubeconfig: the admin's is ``kubeconfig``."""
        return self.kubeconfig if identity == "admin" else self.component_kubeconfig(identity)

    def dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def apiserver_url(self) -> str:
        return f"https://{BRIDGE_IP}:{APISERVER_PORT}"
