"""The real single-node Kubernetes (`make cluster-up`): a pod resolves a Service by DNS; a
blue/green Rollout goes to preview, pauses, and is promoted with the kubectl plugin; the
kubelet pulls an image pushed to the cluster's registry, by digest.

One cluster for the module, from the project's state directory: reused if it is already
up (left up afterwards), else started here and stopped at the end. Selected with
``-m cluster``; it needs root and the binaries of `make cluster-binaries`.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest

from pipeline_ops.cluster import images
from pipeline_ops.cluster.addons import kubectl
from pipeline_ops.cluster.host import nft_queue_supported
from pipeline_ops.cluster.launcher import Cluster
from pipeline_ops.cluster.layout import REGISTRY

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


def _container(name: str, args: list[str], image: str | None = None) -> dict:
    return {
        "name": name,
        "image": image or SMOKE.ref,
        "imagePullPolicy": "Always" if image else "Never",
        "args": args,
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }


def _echo_server(cluster: Cluster, namespace: str) -> None:
    """Deployment `echo` (answers with its pod's name) behind Service `echo` (80 -> 8080)."""
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


def _run_client(
    cluster: Cluster,
    namespace: str,
    name: str,
    args: list[str],
    labels: dict | None = None,
    image: str | None = None,
) -> tuple[str, str]:
    """Run a `smoke` pod to completion: its phase and logs."""
    client = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {"restartPolicy": "Never", "containers": [_container("client", args, image)]},
    }
    kubectl(cluster.layout, "apply", "-f", "-", stdin=json.dumps(client))
    deadline = time.monotonic() + 90
    phase = ""
    while time.monotonic() < deadline and phase not in ("Succeeded", "Failed"):
        time.sleep(0.5)
        phase = kubectl(
            cluster.layout, "-n", namespace, "get", "pod", name, "-o", "jsonpath={.status.phase}"
        )
    return phase, kubectl(cluster.layout, "-n", namespace, "logs", name)


def _echo_pod(cluster: Cluster, namespace: str) -> str:
    return kubectl(
        cluster.layout, "-n", namespace, "get", "pods", "-l", "app=echo", "-o",
        "jsonpath={.items[0].metadata.name}",
    )  # fmt: skip


def test_a_pod_resolves_a_service_by_dns(cluster: Cluster, namespace: str) -> None:
    _echo_server(cluster, namespace)
    host = f"echo.{namespace}.svc.cluster.local"
    phase, logs = _run_client(cluster, namespace, "client", ["get", f"http://{host}/"])
    assert phase == "Succeeded", logs
    cluster_ip = kubectl(
        cluster.layout, "-n", namespace, "get", "service", "echo", "-o",
        "jsonpath={.spec.clusterIP}",
    )  # fmt: skip
    assert cluster_ip.startswith("198.19.")
    assert f"resolved {host} to [{cluster_ip}]" in logs
    assert logs.strip().endswith(_echo_pod(cluster, namespace))


def test_the_kubelet_pulls_an_image_pushed_to_the_registry_by_digest(
    cluster: Cluster, namespace: str
) -> None:
    reference = images.push(SMOKE, REGISTRY)
    assert "@sha256:" in reference
    _echo_server(cluster, namespace)
    url = f"http://echo.{namespace}.svc.cluster.local/"
    phase, logs = _run_client(cluster, namespace, "pulled", ["get", url], image=reference)
    assert phase == "Succeeded", logs
    image_id = kubectl(
        cluster.layout, "-n", namespace, "get", "pod", "pulled", "-o",
        "jsonpath={.status.containerStatuses[0].imageID}",
    )  # fmt: skip
    assert image_id == reference


def test_a_network_policy_denies_what_it_should(cluster: Cluster, namespace: str) -> None:
    if not nft_queue_supported():
        pytest.skip("this kernel lacks nftables' queue expression: kube-network-policies can't")
    _echo_server(cluster, namespace)
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "echo-from-allowed-only", "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": {"app": "echo"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "allowed"}}}]}],
        },
    }
    kubectl(cluster.layout, "apply", "-f", "-", stdin=json.dumps(policy))
    url = f"http://echo.{namespace}.svc.cluster.local/"
    phase, logs = _run_client(cluster, namespace, "allowed", ["get", url], {"role": "allowed"})
    assert phase == "Succeeded", logs
    assert logs.strip().endswith(_echo_pod(cluster, namespace))
    phase, logs = _run_client(cluster, namespace, "denied", ["get", url, "8"])
    assert phase == "Failed", logs
    assert "resolved" in logs  # DNS is not what failed: the connection was denied


def _selector_hash(cluster: Cluster, namespace: str, service: str) -> str:
    return kubectl(
        cluster.layout, "-n", namespace, "get", "service", service, "-o",
        "jsonpath={.spec.selector.rollouts-pod-template-hash}",
    )  # fmt: skip


def _rollout(cluster: Cluster, namespace: str) -> dict:
    return json.loads(
        kubectl(cluster.layout, "-n", namespace, "get", "rollout", "web", "-o", "json")
    )


def _wait_rollout(cluster: Cluster, namespace: str, done, what: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rollout = _rollout(cluster, namespace)
        if done(rollout):
            return rollout
        time.sleep(0.5)
    raise AssertionError(f"rollout not {what} after {timeout}s: {rollout.get('status')}")


def test_a_blue_green_rollout_pauses_on_preview_and_promotes_with_the_plugin(
    cluster: Cluster, namespace: str
) -> None:
    labels = {"app": "web"}
    services = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        }
        for name in ("web-active", "web-preview")
    ]
    rollout = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [_container("web", ["serve", "8080"])]},
            },
            "strategy": {
                "blueGreen": {
                    "activeService": "web-active",
                    "previewService": "web-preview",
                    "autoPromotionEnabled": False,
                    "scaleDownDelaySeconds": 5,
                }
            },
        },
    }
    for manifest in (*services, rollout):
        kubectl(cluster.layout, "apply", "-f", "-", stdin=json.dumps(manifest))

    def healthy(r: dict) -> bool:
        status = r.get("status", {})
        return status.get("phase") == "Healthy" and bool(status.get("stableRS"))

    blue = _wait_rollout(cluster, namespace, healthy, "Healthy")["status"]["stableRS"]
    assert _selector_hash(cluster, namespace, "web-active") == blue

    # green: a new pod template; it must come up behind the preview service and wait.
    rollout["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "COLOR", "value": "green"}
    ]
    kubectl(cluster.layout, "apply", "-f", "-", stdin=json.dumps(rollout))
    paused = _wait_rollout(
        cluster, namespace,
        lambda r: r.get("status", {}).get("phase") == "Paused"
        and r["status"].get("currentPodHash") != blue
        and _selector_hash(cluster, namespace, "web-preview") == r["status"]["currentPodHash"],
        "Paused with green on preview",
    )  # fmt: skip
    green = paused["status"]["currentPodHash"]
    assert _selector_hash(cluster, namespace, "web-active") == blue

    plugin = cluster.layout.root / "bin" / "kubectl-argo-rollouts"
    result = subprocess.run(
        [str(plugin), "--kubeconfig", str(cluster.layout.kubeconfig), "-n", namespace,
         "promote", "web"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _wait_rollout(
        cluster, namespace, lambda r: healthy(r) and r["status"]["stableRS"] == green, "promoted"
    )
    assert _selector_hash(cluster, namespace, "web-active") == green
