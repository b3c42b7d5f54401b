"""Argo Rollouts for real (the controller in the cluster, the kubectl plugin on the host): a
blue/green Rollout waits on preview and is promoted with `kubectl argo rollouts promote`; an
AnalysisRun's `web` and `job` metrics pass against a healthy target and fail against a
broken one; model-serving's disruption budget keeps an active pod through a drain."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from kube_namespace import Namespace, container, wait_for

from pipeline_ops.base.errors import CommandError
from pipeline_ops.paths import PROJECT_ROOT

BASE = PROJECT_ROOT / "argo-apps" / "base"

pytestmark = pytest.mark.cluster


def _selector_hash(ns: Namespace, service: str) -> str:
    return ns.kubectl(
        "get", "service", service, "-o", "jsonpath={.spec.selector.rollouts-pod-template-hash}"
    )


def test_a_blue_green_rollout_pauses_on_preview_and_promotes_with_the_plugin(
    ns: Namespace,
) -> None:
    labels = {"app": "web"}
    services = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        }
        for name in ("web-active", "web-preview")
    ]
    rollout = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container("web", ["serve", "8080"])]},
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
    ns.apply(*services, rollout)

    def status() -> dict:
        return ns.get("rollout", "web").get("status", {})

    def healthy(s: dict) -> bool:
        return s.get("phase") == "Healthy" and bool(s.get("stableRS"))

    blue = wait_for("Healthy", lambda: healthy(s := status()) and s)["stableRS"]
    assert _selector_hash(ns, "web-active") == blue

    # green: a new pod template; it must come up behind the preview service and wait.
    rollout["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "COLOR", "value": "green"}
    ]
    ns.apply(rollout)
    paused = wait_for(
        "Paused with green on preview",
        lambda: (
            (s := status()).get("phase") == "Paused"
            and s.get("currentPodHash") != blue
            and _selector_hash(ns, "web-preview") == s["currentPodHash"]
            and s
        ),
    )
    green = paused["currentPodHash"]
    assert _selector_hash(ns, "web-active") == blue

    plugin = ns.cluster.layout.root / "bin" / "kubectl-argo-rollouts"
    result = subprocess.run(
        [str(plugin), "--kubeconfig", str(ns.cluster.layout.kubeconfig), "-n", ns.name,
         "promote", "web"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    wait_for("promoted", lambda: healthy(s := status()) and s["stableRS"] == green)
    assert _selector_hash(ns, "web-active") == green


def _analysis_run(name: str, url: str) -> dict:
    """A `web` metric (the target's JSON status must be "ok") and a `job` metric (a pod that
    must GET the target)."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisRun",
        "metadata": {"name": name},
        "spec": {
            "args": [{"name": "url", "value": url}],
            "metrics": [
                {
                    "name": "status-is-ok",
                    "successCondition": 'result == "ok"',
                    "provider": {"web": {"url": "{{args.url}}", "jsonPath": "{$.status}"}},
                },
                {
                    "name": "target-answers",
                    "provider": {
                        "job": {
                            "spec": {
                                "backoffLimit": 0,
                                "template": {
                                    "spec": {
                                        "restartPolicy": "Never",
                                        "containers": [
                                            container("probe", ["get", "{{args.url}}", "5"])
                                        ],
                                    }
                                },
                            }
                        }
                    },
                },
            ],
        },
    }


def _finished(ns: Namespace, name: str) -> dict:
    def done() -> dict | None:
        status = ns.get("analysisrun", name).get("status", {})
        return status if status.get("phase") in ("Successful", "Failed", "Error") else None

    return wait_for(f"AnalysisRun {name} finished", done, timeout=120)


def test_an_analysis_run_with_web_and_job_metrics_passes_on_a_healthy_target(
    ns: Namespace,
) -> None:
    url = ns.echo_server("healthy", body=json.dumps({"status": "ok"}))
    ns.apply(_analysis_run("healthy", url))
    status = _finished(ns, "healthy")
    assert status["phase"] == "Successful", status
    phases = {m["name"]: m["phase"] for m in status["metricResults"]}
    assert phases == {"status-is-ok": "Successful", "target-answers": "Successful"}
    web = next(m for m in status["metricResults"] if m["name"] == "status-is-ok")
    # (a measurement before kube-proxy has the new Service's rules may be an Error: retried)
    assert web["measurements"][-1]["value"] == '"ok"'  # the JSON value read from the target


def test_an_analysis_run_fails_on_a_broken_target(ns: Namespace) -> None:
    """The target answers 'degraded' (the web metric fails) and a Service with no pods stands
    for a dead one (the job's pod cannot connect: the job fails)."""
    degraded = ns.echo_server("degraded", body=json.dumps({"status": "degraded"}))
    ns.apply(_analysis_run("degraded", degraded))
    ns.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "dead"},
            "spec": {"selector": {"app": "nothing"}, "ports": [{"port": 80}]},
        },
        _analysis_run("dead", f"http://dead.{ns.name}.svc.cluster.local/"),
    )
    status = _finished(ns, "degraded")
    assert status["phase"] == "Failed", status
    web = next(m for m in status["metricResults"] if m["name"] == "status-is-ok")
    assert web["phase"] == "Failed"
    assert web["measurements"][-1]["value"] == '"degraded"'
    status = _finished(ns, "dead")
    assert status["phase"] in ("Failed", "Error"), status
    job = next(m for m in status["metricResults"] if m["name"] == "target-answers")
    assert job["phase"] == "Failed", status


def _evict(ns: Namespace, pod: str) -> bool:
    """Ask the Eviction API to evict ``pod`` (what a node drain does): True if it was
    evicted, False if a disruption budget refused it."""
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": ns.name},
    }
    try:
        ns.kubectl(
            "create", "--raw", f"/api/v1/namespaces/{ns.name}/pods/{pod}/eviction", "-f", "-",
            stdin=json.dumps(eviction),
        )  # fmt: skip
    except CommandError as error:
        assert "disruption budget" in str(error), error
        return False
    return True


def test_a_drain_during_blue_green_keeps_an_active_serving_pod(ns: Namespace) -> None:
    """model-serving's PodDisruptionBudget, as shipped, over a paused blue/green: two active
    and two preview pods match it; evicting the active ones one after another (a drain) is
    refused at the second, so the active Service keeps a pod."""
    shipped = yaml.safe_load((BASE / "model-serving-pdb.yaml").read_text())
    labels = {"app.kubernetes.io/name": "model-serving"}
    assert shipped["spec"]["selector"]["matchLabels"] == labels
    services = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        }
        for name in ("serving-active", "serving-preview")
    ]
    server = container("serving", ["serve", "8080"])
    # a replacement pod is not ready for a while, as a model-serving pod loading its model
    server["readinessProbe"] = {
        "httpGet": {"path": "/", "port": 8080},
        "initialDelaySeconds": 20,
        "periodSeconds": 2,
    }
    rollout = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "serving"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [server]}},
            "strategy": {
                "blueGreen": {
                    "activeService": "serving-active",
                    "previewService": "serving-preview",
                    "autoPromotionEnabled": False,
                }
            },
        },
    }
    ns.apply(*services, rollout, shipped)

    def status() -> dict:
        return ns.get("rollout", "serving").get("status", {})

    blue = wait_for(
        "Healthy", lambda: (s := status()).get("phase") == "Healthy" and s.get("stableRS"), 180
    )
    server["env"] = [{"name": "COLOR", "value": "green"}]
    ns.apply(rollout)
    wait_for(
        "Paused with green on preview",
        lambda: (s := status()).get("phase") == "Paused" and s.get("currentPodHash") != blue,
        180,
    )
    wait_for(
        "the budget counting four healthy pods (two active, two preview)",
        lambda: ns.get("pdb", "model-serving").get("status", {}).get("currentHealthy") == 4,
        120,
    )
    active = ns.kubectl(
        "get", "pods", "-l", f"rollouts-pod-template-hash={blue}",
        "-o", "jsonpath={.items[*].metadata.name}",
    ).split()  # fmt: skip
    assert len(active) == 2
    assert _evict(ns, active[0])
    assert not _evict(ns, active[1]), "both active pods evicted: the active Service has none"
    endpoints = ns.kubectl(
        "get", "endpoints", "serving-active", "-o", "jsonpath={.subsets[*].addresses[*].ip}"
    ).split()
    assert endpoints, "the active Service lost every endpoint during the drain"
