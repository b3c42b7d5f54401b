"""The host's client of the cluster's Prometheus (the Prometheus Operator's ``k8s``,
monitoring.py): its address from this machine, Service ``prometheus-k8s`` on its fixed cluster
IP, and instant queries. Pods use ``http://prometheus-operated.monitoring.svc:9090``."""

from __future__ import annotations

import json

import requests

from pipeline_ops.cluster import ClusterError
from pipeline_ops.cluster.layout import PROMETHEUS_PORT, PROMETHEUS_SERVICE_IP

IN_CLUSTER_URL = f"http://prometheus-operated.monitoring.svc:{PROMETHEUS_PORT}"


def url() -> str:
    return f"http://{PROMETHEUS_SERVICE_IP}:{PROMETHEUS_PORT}"


def query(expression: str) -> list[dict]:
    """An instant query's result vector (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
    response = requests.get(f"{url()}/api/v1/query", params={"query": expression}, timeout=10)
    body = response.json()
    if body.get("status") != "success":
        raise ClusterError(f"prometheus query {expression!r} failed: {json.dumps(body)[:500]}")
    return body["data"]["result"]
