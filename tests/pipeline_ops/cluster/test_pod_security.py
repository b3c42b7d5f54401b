"""Pod Security admission as our namespace ships it: the API server refuses a pod that does
not meet the `restricted` profile and admits one that does (every pod of argo-apps/base does,
which `make validate` checks offline and the cluster run proves by running them all)."""

from __future__ import annotations

import pytest
import yaml
from kube_namespace import Namespace, container, wait_for

from pipeline_ops.base.errors import CommandError
from pipeline_ops.paths import PROJECT_ROOT

pytestmark = pytest.mark.cluster

SHIPPED = yaml.safe_load((PROJECT_ROOT / "argo-apps/base/namespace.yaml").read_text())


def _pod(name: str, security: dict, pod_security: dict | None = None) -> dict:
    main = container("main", ["serve", "8080"])
    main["securityContext"] = security
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"securityContext": pod_security or {}, "containers": [main]},
    }


@pytest.fixture
def restricted(ns: Namespace) -> Namespace:
    """The test's namespace with our namespace's Pod Security labels, as shipped."""
    labels = {k: v for k, v in SHIPPED["metadata"]["labels"].items() if "pod-security" in k}
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    ns.kubectl("label", "namespace", ns.name, *(f"{k}={v}" for k, v in labels.items()))
    return ns


def test_a_pod_that_may_escalate_and_keeps_its_capabilities_is_refused(restricted: Namespace):
    with pytest.raises(CommandError) as refused:
        restricted.apply(_pod("loose", {"runAsNonRoot": True, "runAsUser": 10001}))
    message = str(refused.value)
    assert 'violates PodSecurity "restricted:v1.34"' in message
    assert "allowPrivilegeEscalation != false" in message
    assert "unrestricted capabilities" in message
    assert "seccompProfile" in message


def test_a_privileged_pod_is_refused(restricted: Namespace):
    with pytest.raises(CommandError, match="privileged"):
        restricted.apply(_pod("privileged", {"privileged": True}))


def test_a_pod_as_our_manifests_write_them_is_admitted_and_runs(restricted: Namespace):
    restricted.apply(
        _pod(
            "compliant",
            {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
            {"seccompProfile": {"type": "RuntimeDefault"}},
        )
    )
    wait_for(
        "the compliant pod running",
        lambda: restricted.get("pod", "compliant")["status"].get("phase") == "Running",
    )
