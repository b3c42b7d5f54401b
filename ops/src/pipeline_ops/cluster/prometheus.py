"""Prometheus 3.5 LTS on the host (built from its Go module: Debian's prometheus 2.42 package is
compiled without Kubernetes service discovery), on the bridge address
(``http://198.19.0.1:9090``: the host and the pods, such as an AnalysisRun's prometheus
metric, both reach it; nothing else does). It finds pods by Kubernetes service discovery
against this cluster's apiserver (as user ``pr-anomaly-prometheus``: read-only RBAC on pods,
services, endpoints) and scrapes those annotated the usual way::

    prometheus.io/scrape: "true"     prometheus.io/port: "8080"     prometheus.io/path: /metrics

Each sample gets the pod's labels and ``namespace``/``pod``. Its data lives in
``.local/cluster/prometheus`` for one run of the cluster (a day's retention at most).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pipeline_ops.cluster import ClusterError
from pipeline_ops.cluster.layout import BRIDGE_IP, PROMETHEUS_PORT, Layout, binary
from pipeline_ops.cluster.platform import PROMETHEUS, host_server_objects

if TYPE_CHECKING:
    from pipeline_ops.cluster.launcher import Cluster

USER = "pr-anomaly-prometheus"
SCRAPE_INTERVAL = "5s"


def url() -> str:
    return f"http://{BRIDGE_IP}:{PROMETHEUS_PORT}"


def start_command(cluster: Cluster) -> list[str]:
    """Its read-only RBAC and its Service applied, its configuration written: its command."""
    layout, pki = cluster.layout, cluster.pki
    layout.kubectl().apply(rbac(), force_conflicts=False)
    # the Prometheus Operator's Service name, which the post-promotion analysis uses
    layout.kubectl().apply(host_server_objects(PROMETHEUS, PROMETHEUS_PORT))
    return command(layout, config(layout, pki.ca, pki.cert("prometheus"), pki.key("prometheus")))


def rbac() -> list[dict]:
    rules = [{"apiGroups": [""], "resources": ["pods", "services", "endpoints", "namespaces"],
              "verbs": ["get", "list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
              "verbs": ["get", "list", "watch"]}]  # fmt: skip
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": USER}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": USER},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": USER},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                       "name": USER}]},
    ]  # fmt: skip


def config(layout: Layout, ca: Path, cert: Path, key: Path) -> Path:
    def keep_annotated(name: str) -> str:
        return f"__meta_kubernetes_pod_annotation_prometheus_io_{name}"

    scrape_pods = {
        "job_name": "kubernetes-pods",
        "kubernetes_sd_configs": [{
            "role": "pod", "api_server": layout.apiserver_url,
            "tls_config": {"ca_file": str(ca), "cert_file": str(cert), "key_file": str(key)},
        }],
        "relabel_configs": [
            {"source_labels": [keep_annotated("scrape")], "action": "keep", "regex": "true"},
            {"source_labels": ["__meta_kubernetes_pod_phase"], "action": "keep",
             "regex": "Running"},
            {"source_labels": [keep_annotated("path")], "target_label": "__metrics_path__",
             "regex": "(.+)"},
            {"source_labels": ["__address__", keep_annotated("port")],
             "regex": r"([^:]+)(?::\d+)?;(\d+)", "replacement": "$1:$2",
             "target_label": "__address__"},
            {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }  # fmt: skip
    document = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": "15s"},
        "scrape_configs": [
            scrape_pods,
            {"job_name": "prometheus",
             "static_configs": [{"targets": [f"{BRIDGE_IP}:{PROMETHEUS_PORT}"]}]},
        ],
    }  # fmt: skip
    path = layout.dir("prometheus") / "prometheus.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def command(layout: Layout, config_file: Path) -> list[str]:
    return [
        str(binary("prometheus")), f"--config.file={config_file}",
        f"--storage.tsdb.path={layout.dir('prometheus') / 'data'}",
        "--storage.tsdb.retention.time=1d",
        f"--web.listen-address={BRIDGE_IP}:{PROMETHEUS_PORT}",
        "--log.level=warn",
    ]  # fmt: skip


def query(expression: str) -> list[dict]:
    """An instant query's result vector (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
    import requests

    response = requests.get(f"{url()}/api/v1/query", params={"query": expression}, timeout=10)
    body = response.json()
    if body.get("status") != "success":
        raise ClusterError(f"prometheus query {expression!r} failed: {json.dumps(body)[:500]}")
    return body["data"]["result"]
