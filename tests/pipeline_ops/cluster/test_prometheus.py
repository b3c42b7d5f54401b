"""The Prometheus Operator's monitoring for real (monitoring.py): Prometheus scrapes what a
PodMonitor selects, in any namespace, with the labels the operator gives its targets; an
AnalysisRun's ``prometheus`` metric queries it from inside the cluster at
``prometheus-operated.monitoring.svc``; a PrometheusRule's alert reaches Alertmanager and the
receiver it delivers every alert to. The operator picks up a new PodMonitor or rule by
rewriting a Secret or ConfigMap that the kubelet syncs into the Prometheus pod (within its
sync period, about a minute), hence the waits of minutes."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import requests
from kube_namespace import Namespace, wait_for

from pipeline_ops.cluster import ClusterError, monitoring, prometheus

pytestmark = pytest.mark.cluster

PICKED_UP = 180  # seconds: the operator's rewrite, the kubelet's sync, a reload, a scrape


def _pod_monitor(name: str, app: str, target_labels: list[str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "5s"}],
            **({"podTargetLabels": target_labels} if target_labels else {}),
        },
    }


def test_the_stack_runs_as_kube_prometheus_does_and_reports_the_pinned_releases(cluster) -> None:
    """Services of the operator's and ours, each component scraped by its ServiceMonitor, and
    each binary reporting the release it was built from."""
    kubectl = cluster.layout.kubectl()
    ports = {
        name: kubectl.get(monitoring.NAMESPACE, "service", name)["spec"]["ports"]
        for name in ("prometheus-operated", "prometheus-k8s", "alertmanager-operated",
                     "alertmanager-main", monitoring.RECEIVER)
    }  # fmt: skip
    assert 9090 in [p["port"] for p in ports["prometheus-operated"]]
    assert 9090 in [p["port"] for p in ports["prometheus-k8s"]]
    assert 9093 in [p["port"] for p in ports["alertmanager-operated"]]
    assert 9093 in [p["port"] for p in ports["alertmanager-main"]]
    for job in ("prometheus-k8s", "alertmanager-main", "prometheus-operator"):
        up = wait_for(f"{job} scraped", lambda j=job: prometheus.query(f'up{{job="{j}"}} == 1'),
                      PICKED_UP)  # fmt: skip
        assert len(up) == 1, up
    releases = {
        "prometheus_build_info": "3.5.1",
        "alertmanager_build_info": "0.35.0",
        "prometheus_operator_build_info": "0.94.1",
    }
    for metric, version in releases.items():
        (sample,) = prometheus.query(metric)
        assert sample["metric"]["version"] == version, sample


def test_a_pod_monitor_has_a_pods_own_metric_scraped(ns: Namespace) -> None:
    exposition = 'pr_anomaly_smoke_answer{source="pod"} 42'
    ns.echo_server("exporter", body=exposition)
    ns.echo_server("quiet", body=exposition)  # the same metric, selected by no PodMonitor
    ns.apply(_pod_monitor("exporter", "exporter", target_labels=["app"]))
    pod = ns.kubectl("get", "pods", "-l", "app=exporter", "-o",
                     "jsonpath={.items[0].metadata.name}")  # fmt: skip
    expression = f'pr_anomaly_smoke_answer{{namespace="{ns.name}"}}'
    result = wait_for(f"{expression} in Prometheus", lambda: prometheus.query(expression),
                      PICKED_UP)  # fmt: skip
    assert len(result) == 1, result  # only the selected pod
    sample = result[0]
    assert sample["value"][1] == "42"
    assert sample["metric"]["source"] == "pod"  # the exporter's own label, kept
    # the labels the operator gives a PodMonitor's targets, and the pod label it was asked for
    assert sample["metric"]["pod"] == pod
    assert sample["metric"]["job"] == f"{ns.name}/exporter"
    assert sample["metric"]["endpoint"] == "http"
    assert sample["metric"]["app"] == "exporter"
    up = prometheus.query(f'up{{job="{ns.name}/exporter"}}')
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
                    "provider": {
                        "prometheus": {"address": prometheus.IN_CLUSTER_URL, "query": query}
                    },
                }
            ]
        },
    }


def test_an_analysis_run_queries_prometheus_from_the_cluster(ns: Namespace) -> None:
    """The Rollouts controller (a pod) reaches Prometheus by the operator's Service name: a
    metric a pod exports passes; a query on a metric nobody exports returns nothing, and
    fails."""
    ns.echo_server("exporter", body='pr_anomaly_smoke_answer{source="pod"} 42')
    ns.apply(_pod_monitor("exporter", "exporter"))
    exported = f'sum(pr_anomaly_smoke_answer{{namespace="{ns.name}"}})'
    wait_for("the metric scraped", lambda: prometheus.query(exported), PICKED_UP)
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


def test_a_rules_alert_reaches_the_receiver(ns: Namespace) -> None:
    """A PrometheusRule in any namespace is evaluated; its alert goes to Alertmanager, which
    delivers it to the receiver, which keeps it for us to read."""
    alert = f"PrAnomalySmoke{secrets.token_hex(3)}"
    ns.apply(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {"name": "smoke"},
            "spec": {"groups": [{"name": "smoke", "rules": [{
                "alert": alert, "expr": "vector(1)", "for": "0s",
                "labels": {"severity": "none", "smoke_namespace": ns.name},
                "annotations": {"summary": "always firing: the cluster tests' alert"},
            }]}]},
        }
    )  # fmt: skip

    def delivered() -> list[tuple[dict, dict]]:
        return [(note["payload"], one) for note in monitoring.received()
                for one in note["payload"].get("alerts", [])
                if one["labels"].get("alertname") == alert]  # fmt: skip

    try:
        found = wait_for(f"{alert} delivered to the receiver", delivered, PICKED_UP)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{_where_it_stopped(alert)}") from error
    payload, first = found[0]
    assert payload["receiver"] == monitoring.RECEIVER
    assert first["status"] == "firing"
    assert first["labels"]["smoke_namespace"] == ns.name
    assert first["annotations"]["summary"].startswith("always firing")
    firing = prometheus.query(f'ALERTS{{alertname="{alert}",alertstate="firing"}}')
    assert len(firing) == 1, firing


def _where_it_stopped(alert: str) -> str:
    """What Prometheus and Alertmanager know of ``alert`` (for a failure's message)."""
    seen = []
    try:
        seen.append(f"Prometheus ALERTS: {prometheus.query(f'ALERTS{{alertname={alert!r}}}')}")
        response = requests.get(f"{monitoring.alertmanager_url()}/api/v2/alerts",
                                params={"filter": f'alertname="{alert}"'}, timeout=10)  # fmt: skip
        seen.append(f"Alertmanager: {response.status_code} {response.text[:1000]}")
        seen.append(f"the receiver keeps {len(monitoring.received())} notifications")
    except (requests.RequestException, ValueError, ClusterError) as error:
        seen.append(f"(could not ask: {error})")
    return "\n".join(seen)
