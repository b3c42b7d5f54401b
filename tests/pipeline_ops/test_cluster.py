"""The real single-node Kubernetes (`make cluster-up`): a pod resolves a Service by DNS.

One cluster for the module, from the project's state directory: reused if it is already
up (left up afterwards), else started here and stopped at the end. Selected with
``-m cluster``; it needs root and the binaries of `make cluster-binaries`.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import pytest

from pipeline_ops.cluster import images
from pipeline_ops.cluster.addons import kubectl
from pipeline_ops.cluster.launcher import Cluster

pytestmark = pytest.mark.cluster

SMOKE = images.ScratchImage("pr-anomaly.local/smoke", "smoke")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    started_here = bool(cluster.up())  # {} when it was already up and healthy
    try:
        images.ensure_imported(cluster.layout, [SMOKE])
        yield cluster
    finally:
        if started_here:
            cluster.down()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"smoke-{secrets.token_hex(3)}"
    kubectl(cluster.layout, "create", "namespace", name)
    deadline = time.monotonic() + 30  # pods need the namespace's default ServiceAccount
    while time.monotonic() < deadline:
        if kubectl(cluster.layout, "-n", name, "get", "serviceaccounts", "-o", "name").strip():
            break
        time.sleep(0.5)
    try:
        yield name
    finally:
        kubectl(cluster.layout, "delete", "namespace", name, "--wait=false")


def _container(name: str, args: list[str]) -> dict:
    return {
        "name": name,
        "image": SMOKE.ref,
        "imagePullPolicy": "Never",
        "args": args,
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }


def test_a_pod_resolves_a_service_by_dns(cluster: Cluster, namespace: str) -> None:
    labels = {"app": "echo"}
    server = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "echo", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [_container("echo", ["serve", "8080"])]},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo", "namespace": namespace},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    for manifest in (server, service):
        kubectl(cluster.layout, "apply", "-f", "-", stdin=json.dumps(manifest))
    kubectl(
        cluster.layout, "-n", namespace, "rollout", "status", "deployment/echo", "--timeout=90s",
        timeout=100,
    )  # fmt: skip
    host = f"echo.{namespace}.svc.cluster.local"
    client = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "containers": [_container("client", ["get", f"http://{host}/"])],
        },
    }
    kubectl(cluster.layout, "apply", "-f", "-", stdin=json.dumps(client))
    deadline = time.monotonic() + 90
    phase = ""
    while time.monotonic() < deadline and phase not in ("Succeeded", "Failed"):
        time.sleep(0.5)
        phase = kubectl(
            cluster.layout, "-n", namespace, "get", "pod", "client", "-o",
            "jsonpath={.status.phase}",
        )  # fmt: skip
    logs = kubectl(cluster.layout, "-n", namespace, "logs", "client")
    assert phase == "Succeeded", logs
    cluster_ip = kubectl(
        cluster.layout, "-n", namespace, "get", "service", "echo", "-o",
        "jsonpath={.spec.clusterIP}",
    )  # fmt: skip
    assert cluster_ip.startswith("198.19.")
    assert f"resolved {host} to [{cluster_ip}]" in logs
    server_pod = kubectl(
        cluster.layout, "-n", namespace, "get", "pods", "-l", "app=echo", "-o",
        "jsonpath={.items[0].metadata.name}",
    )  # fmt: skip
    assert logs.strip().endswith(server_pod)
