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
