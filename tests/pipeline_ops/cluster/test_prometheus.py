"""Prometheus for real: it discovers pods through this cluster's apiserver and scrapes those
annotated ``prometheus.io/scrape``; a query returns a pod's own metric, labelled with its
namespace and pod."""

from __future__ import annotations

import pytest
from kube_namespace import Namespace, wait_for

from pipeline_ops.cluster import prometheus

pytestmark = pytest.mark.cluster


def test_prometheus_answers_a_query_about_a_pods_own_metric(ns: Namespace) -> None:
    exposition = 'pr_anomaly_smoke_answer{source="pod"} 42'
    ns.echo_server("exporter", body=exposition,
                   annotations={"prometheus.io/scrape": "true", "prometheus.io/port": "8080",
                                "prometheus.io/path": "/metrics"})  # fmt: skip
    # a pod of the same app without the annotation: discovered, never scraped
    ns.echo_server("quiet", body=exposition)
    pod = ns.kubectl("get", "pods", "-l", "app=exporter", "-o",
                     "jsonpath={.items[0].metadata.name}")  # fmt: skip
    expression = f'pr_anomaly_smoke_answer{{namespace="{ns.name}"}}'
    result = wait_for(f"{expression} in Prometheus", lambda: prometheus.query(expression), 60)
    assert len(result) == 1, result  # only the annotated pod
    sample = result[0]
    assert sample["value"][1] == "42"
    assert sample["metric"]["pod"] == pod
    assert sample["metric"]["app"] == "exporter"
    assert sample["metric"]["source"] == "pod"
    up = prometheus.query(f'up{{job="kubernetes-pods",namespace="{ns.name}"}}')
    assert [s["value"][1] for s in up] == ["1"]


def _prometheus_run(name: str, query: str) -> dict:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisRun",
        "metadata": {"name": name},
        "spec": {
            "metrics": [
                {
                    "name": "answer",
                    # an empty result (a metric nobody exports) must not pass
                    "successCondition": "len(result) == 1 && result[0] == 42",
                    "provider": {"prometheus": {"address": prometheus.url(), "query": query}},
                }
            ]
        },
    }


def test_an_analysis_run_queries_prometheus_from_the_cluster(ns: Namespace) -> None:
    """The Rollouts controller (a pod) reaches Prometheus on the bridge address: a metric a pod
    exports passes; a query on a metric nobody exports returns nothing, and fails."""
    scraped = {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"}
    ns.echo_server("exporter", body='pr_anomaly_smoke_answer{source="pod"} 42', annotations=scraped)
    exported = f'sum(pr_anomaly_smoke_answer{{namespace="{ns.name}"}})'
    wait_for("the metric scraped", lambda: prometheus.query(exported), 60)
    missing = f'sum(pr_anomaly_never_exported{{namespace="{ns.name}"}})'
    ns.apply(_prometheus_run("exported", exported), _prometheus_run("missing", missing))

    def finished(name: str) -> dict | None:
        status = ns.get("analysisrun", name).get("status", {})
        return status if status.get("phase") in ("Successful", "Failed", "Error") else None

    passed = wait_for("exported finished", lambda: finished("exported"), 90)
    assert passed["phase"] == "Successful", passed
    assert passed["metricResults"][0]["measurements"][-1]["value"] == "[42]"
    failed = wait_for("missing finished", lambda: finished("missing"), 90)
    assert failed["phase"] == "Failed", failed
    assert failed["metricResults"][0]["measurements"][-1]["value"] == "[]"
