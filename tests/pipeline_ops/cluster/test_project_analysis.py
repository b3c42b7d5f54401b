"""The project's own post-promotion analysis (argo-apps/base) against this cluster's
Prometheus, and the node's capacity policy: what the manifests rely on in the cluster.

The post-promotion template used to query ``http_requests_total`` (which model-serving never
exported) with ``len(result) == 0 || ...``: an empty result passed, so any revision was
kept. It must read ``model_serving_requests_total`` of the new revision's pods, and fail when
there is no evidence."""

from __future__ import annotations

import json
import secrets

import pytest
import yaml
from kube_namespace import Namespace, container, wait_for

from pipeline_ops.cluster.addons import LOCAL_REQUESTS
from pipeline_ops.cluster.layout import STAGING_NAMESPACE
from pipeline_ops.paths import PROJECT_ROOT

pytestmark = pytest.mark.cluster

TEMPLATES = PROJECT_ROOT / "argo-apps" / "base" / "model-serving-analysistemplates.yaml"
ROLLOUT = PROJECT_ROOT / "argo-apps" / "base" / "model-serving-rollout.yaml"
PODMONITOR = PROJECT_ROOT / "argo-apps" / "base" / "model-serving-podmonitor.yaml"


def _post_promotion_run(name: str, namespace: str, pod_hash: str) -> dict:
    """An AnalysisRun of the project's post-promotion template, as the Rollout would start
    it (its args), measured every 5 s instead of every minute."""
    template = next(
        d for d in yaml.safe_load_all(TEMPLATES.read_text())
        if d["metadata"]["name"] == "model-serving-post-promotion"
    )  # fmt: skip
    annotations = yaml.safe_load(ROLLOUT.read_text())["metadata"]["annotations"]
    address = annotations["pr-anomaly-mlops/prometheus-address"]
    args = {a["name"]: a.get("value") for a in template["spec"]["args"]}
    args.update(
        {"namespace": namespace, "pod-template-hash": pod_hash, "prometheus-address": address}
    )
    metrics = [
        {**m, "interval": "5s", "initialDelay": "0s", "count": 2}
        for m in template["spec"]["metrics"]
    ]
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisRun",
        "metadata": {"name": name},
        "spec": {"args": [{"name": k, "value": v} for k, v in args.items()], "metrics": metrics},
    }


def _finished(ns: Namespace, name: str) -> dict:
    def done() -> dict | None:
        status = ns.get("analysisrun", name).get("status", {})
        return status if status.get("phase") in ("Successful", "Failed", "Error") else None

    return wait_for(f"AnalysisRun {name} finished", done, timeout=180)


def test_post_promotion_analysis_fails_without_evidence(ns: Namespace) -> None:
    """A revision whose pods answered no scoring request (here: a counter that never moves,
    and a revision with no pods at all) is not judged healthy: both runs fail, through the
    in-cluster Prometheus address the Rollout passes."""
    still = f"{secrets.token_hex(4)}"
    exposition = 'model_serving_requests_total{method="POST",route="/v1/score",status="200"} 10'
    ns.echo_server("still", body=exposition)
    # scraped as model-serving is: the project's own PodMonitor selects it
    ns.apply(yaml.safe_load(PODMONITOR.read_text()))
    ns.kubectl("label", "pods", "-l", "app=still", f"rollouts-pod-template-hash={still}",
               "app.kubernetes.io/name=model-serving")  # fmt: skip
    ns.apply(_post_promotion_run("idle", ns.name, still), _post_promotion_run("gone", ns.name, "0"))
    for name in ("idle", "gone"):
        status = _finished(ns, name)
        assert status["phase"] == "Failed", (name, status)
        measurement = status["metricResults"][0]["measurements"][-1]
        assert measurement["phase"] in ("Failed", "Error"), measurement


def test_the_environments_pods_are_admitted_with_small_requests(cluster) -> None:
    """The 2-core node cannot hold production's requests: the capacity policy lowers them
    for the environments' namespaces; limits stay as written."""
    layout = cluster.layout
    name = f"capacity-{secrets.token_hex(3)}"
    box = container("main", ["serve", "8080"])
    box["resources"] = {"requests": {"cpu": "1", "memory": "2Gi"},
                        "limits": {"cpu": "2", "memory": "4Gi"}}  # fmt: skip
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": STAGING_NAMESPACE},
           "spec": {"containers": [box]}}  # fmt: skip
    layout.kubectl()("apply", "-f", "-", stdin=json.dumps(pod))
    try:
        resources = yaml.safe_load(
            layout.kubectl()(
                "-n",
                STAGING_NAMESPACE,
                "get",
                "pod",
                name,
                "-o",
                "jsonpath={.spec.containers[0].resources}",
            )
        )
        assert resources["requests"] == LOCAL_REQUESTS
        assert resources["limits"] == {"cpu": "2", "memory": "4Gi"}
    finally:
        layout.kubectl()("-n", STAGING_NAMESPACE, "delete", "pod", name, "--wait=false")
