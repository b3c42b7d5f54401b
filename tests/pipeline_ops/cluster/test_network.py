"""Pods and Services: a pod resolves a Service by the cluster's DNS and reaches it; a
NetworkPolicy denies what it should (kube-network-policies, fed by the host's iptables)."""

from __future__ import annotations

import pytest
from kube_namespace import Namespace

pytestmark = pytest.mark.cluster


def _echo_pod(ns: Namespace) -> str:
    return ns.kubectl("get", "pods", "-l", "app=echo", "-o", "jsonpath={.items[0].metadata.name}")


def test_a_pod_resolves_a_service_by_dns(ns: Namespace) -> None:
    url = ns.echo_server()
    phase, logs = ns.run_pod("client", ["get", url])
    assert phase == "Succeeded", logs
    cluster_ip = ns.kubectl("get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}")
    assert cluster_ip.startswith("198.19.")
    assert f"resolved echo.{ns.name}.svc.cluster.local to [{cluster_ip}]" in logs
    assert logs.strip().endswith(_echo_pod(ns))


def test_a_network_policy_denies_what_it_should(ns: Namespace) -> None:
    url = ns.echo_server()
    ns.apply(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "echo-from-allowed-only"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "echo"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "allowed"}}}]}],
            },
        }
    )
    phase, logs = ns.run_pod("allowed", ["get", url], {"role": "allowed"})
    assert phase == "Succeeded", logs
    assert logs.strip().endswith(_echo_pod(ns))
    phase, logs = ns.run_pod("denied", ["get", url, "8"])
    assert phase == "Failed", logs
    assert "resolved" in logs  # DNS is not what failed: the connection was denied
