"""Monitoring as production has it (kube-prometheus' shape): the Prometheus Operator v0.94.1
in namespace ``monitoring``, the ``Prometheus`` ``k8s`` and the ``Alertmanager`` ``main`` it
runs as StatefulSets, and ``alert-receiver``, the webhook Alertmanager delivers every
notification to (it keeps the last ones in memory: ``GET /alerts``).

Prometheus selects every PodMonitor, ServiceMonitor, Probe and PrometheusRule in every
namespace (empty selectors) and sends its alerts to ``alertmanager-main``. Pods reach it by
the operator's own Service, ``prometheus-operated.monitoring.svc:9090`` (what an AnalysisRun's
``prometheus`` metric queries), or by ours, ``prometheus-k8s`` (port 9090); Alertmanager by
``alertmanager-operated`` and ``alertmanager-main`` (9093). The host reaches ours by their
fixed cluster IPs (layout.py).

From the operator's Go module, read at run time: the CRDs (``example/prometheus-operator-crd``;
a few are over a megabyte, so server-side applied, as every apply here is) and the operator's
Deployment, RBAC, Service and ServiceMonitor (``example/rbac/prometheus-operator``), moved to
``monitoring`` and given our images. Every image is one static binary FROM scratch
(images.py), imported into containerd at its start (``imagePullPolicy: Never``, as the other
add-ons), the binary where its upstream image has it (the operator runs
``/bin/prometheus-config-reloader`` by that path).
"""

from __future__ import annotations

import re
import time
from functools import partial
from pathlib import Path
from typing import Any

import requests
import yaml

from pipeline_ops.base.polling import wait_until
from pipeline_ops.cluster import ClusterError, prometheus
from pipeline_ops.cluster.addons import module_dir
from pipeline_ops.cluster.images import ScratchImage
from pipeline_ops.cluster.layout import (
    ALERT_RECEIVER_PORT,
    ALERT_RECEIVER_SERVICE_IP,
    ALERTMANAGER_PORT,
    ALERTMANAGER_SERVICE_IP,
    PROMETHEUS_PORT,
    PROMETHEUS_SERVICE_IP,
    Layout,
    binaries,
)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's safe loader (the CRDs are ~4.5 MB: pure Python takes seconds), reading a
    plain ``=`` as the string it is in YAML 1.2 (the CRDs' label-matcher enums), not as
    YAML 1.1's "value" tag, which PyYAML cannot construct."""


_Loader.add_constructor("tag:yaml.org,2002:value", yaml.SafeLoader.construct_yaml_str)

MODULE = "github.com/prometheus-operator/prometheus-operator"
NAMESPACE = "monitoring"
OPERATOR = ScratchImage("pr-anomaly.local/prometheus-operator", "prometheus-operator",
                        path="/bin/operator")  # fmt: skip
CONFIG_RELOADER = ScratchImage("pr-anomaly.local/prometheus-config-reloader",
                               "prometheus-config-reloader",
                               path="/bin/prometheus-config-reloader")  # fmt: skip
PROMETHEUS = ScratchImage("pr-anomaly.local/prometheus", "prometheus-static",
                          path="/bin/prometheus")  # fmt: skip
ALERTMANAGER = ScratchImage("pr-anomaly.local/alertmanager", "alertmanager",
                            path="/bin/alertmanager")  # fmt: skip
ALERT_RECEIVER = ScratchImage("pr-anomaly.local/alert-receiver", "alert-receiver")
IMAGES = (OPERATOR, CONFIG_RELOADER, PROMETHEUS, ALERTMANAGER, ALERT_RECEIVER)

PROMETHEUS_NAME = "k8s"  # StatefulSet prometheus-k8s, Services prometheus-k8s and -operated
ALERTMANAGER_NAME = "main"  # StatefulSet alertmanager-main, Services alertmanager-main, -operated
RECEIVER = "alert-receiver"
RECEIVER_KEEPS = 200  # notifications kept in memory

# Alertmanager's grouping timers. Production keeps kube-prometheus' (30s, 5m, 12h): a page is
# grouped for half a minute and repeated twice a day. These are for the local environment: a
# test sees a notification within seconds of the alert firing, and a group's change within
# a quarter of a minute.
LOCAL_ROUTE_TIMERS = {"group_wait": "5s", "group_interval": "15s", "repeat_interval": "1h"}

_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "runAsGroup": 65534,
    "fsGroup": 65534,
    "seccompProfile": {"type": "RuntimeDefault"},
}
_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def release(name: str) -> str:
    """The release a binary of ops/cluster/binaries.tsv is, as ``spec.version`` names it:
    Prometheus' Go module v0.3XY.Z is Prometheus v3.XY.Z; the others' module is their release."""
    version = binaries()[name].version
    if name != PROMETHEUS.binary:
        return version
    match = re.fullmatch(r"v0\.3(\d\d)\.(\d+)", version)
    if not match:
        raise ClusterError(f"{name} {version}: not a Prometheus 3 module version (v0.3XY.Z)")
    return f"v3.{int(match[1])}.{match[2]}"


def alertmanager_url() -> str:
    """Alertmanager from this machine: Service alertmanager-main on its fixed cluster IP."""
    return f"http://{ALERTMANAGER_SERVICE_IP}:{ALERTMANAGER_PORT}"


def receiver_url() -> str:
    """The receiver from this machine: Service alert-receiver on its fixed cluster IP."""
    return f"http://{ALERT_RECEIVER_SERVICE_IP}:{ALERT_RECEIVER_PORT}"


def received() -> list[dict[str, Any]]:
    """Every notification the receiver keeps, oldest first: ``{"at": ..., "payload": {...}}``,
    the payload as Alertmanager's webhook sends it (``status``, ``alerts``, ``groupLabels``...)."""
    response = requests.get(f"{receiver_url()}/alerts", timeout=10)
    response.raise_for_status()
    return list(response.json()["received"])


# -- the operator, from its module ---------------------------------------------------------
def _source() -> Path:
    return module_dir(MODULE, binaries()[OPERATOR.binary].version)


def crds() -> list[dict[str, Any]]:
    directory = _source() / "example" / "prometheus-operator-crd"
    found = [yaml.load(p.read_text(), Loader=_Loader) for p in sorted(directory.glob("*.yaml"))]
    if not found:
        raise ClusterError(f"prometheus-operator: no CRDs in {directory}")
    return found


def operator_objects() -> list[dict[str, Any]]:
    """Upstream's example/rbac/prometheus-operator, in ``monitoring``, with our images."""
    directory = _source() / "example" / "rbac" / "prometheus-operator"
    objects = [yaml.load(p.read_text(), Loader=_Loader) for p in sorted(directory.glob("*.yaml"))]
    return [_ours(o) for o in objects]


def _ours(upstream: dict[str, Any]) -> dict[str, Any]:
    kind = upstream["kind"]
    if kind not in ("ClusterRole", "ClusterRoleBinding"):
        upstream["metadata"]["namespace"] = NAMESPACE
    for subject in upstream.get("subjects", []):
        subject["namespace"] = NAMESPACE
    if kind == "Deployment":
        (box,) = upstream["spec"]["template"]["spec"]["containers"]
        reloader = next((a for a in box["args"] if a.startswith("--prometheus-config-reloader=")),
                        None)  # fmt: skip
        if reloader is None or not box["image"].endswith(":" + release(OPERATOR.binary)):
            raise ClusterError(
                "prometheus-operator: its example Deployment no longer has the image and the "
                f"--prometheus-config-reloader flag expected: {box}"
            )
        box["image"] = OPERATOR.ref
        box["imagePullPolicy"] = "Never"
        box["args"] = [f"--prometheus-config-reloader={CONFIG_RELOADER.ref}"
                       if a == reloader else a for a in box["args"]]  # fmt: skip
    return upstream


# -- Prometheus, Alertmanager, the receiver ------------------------------------------------
def _meta(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": NAMESPACE, **extra}


def _service_account(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name)}


def _service(name: str, ip: str, port: int, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, labels={"app.kubernetes.io/name": name}),
        "spec": {"clusterIP": ip, "selector": selector,
                 "ports": [{"name": "web", "port": port, "targetPort": port}]},
    }  # fmt: skip


def _service_monitor(name: str) -> dict[str, Any]:
    """Scrapes Service ``name``'s ``web`` port (Prometheus and Alertmanager scraped by the
    stack itself, as kube-prometheus does)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(name),
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                 "endpoints": [{"port": "web", "interval": "30s"}]},
    }  # fmt: skip


def _operated(
    kind: str, name: str, image: ScratchImage, ip: str, port: int, **spec: Any
) -> list[dict[str, Any]]:
    """A ``kind`` (Prometheus, Alertmanager) the operator runs as StatefulSet
    ``<app>-<name>`` from our image, as ServiceAccount ``<app>-<name>`` (made by the caller),
    and our Service of the same name on its fixed cluster IP, scraped by the stack itself."""
    app = kind.lower()
    account = f"{app}-{name}"
    custom = {
        "image": image.ref,
        "version": release(image.binary),
        "imagePullPolicy": "Never",
        "replicas": 1,
        "serviceAccountName": account,
        **spec,
        "securityContext": _POD_SECURITY,
    }
    return [
        {"apiVersion": "monitoring.coreos.com/v1", "kind": kind, "metadata": _meta(name),
         "spec": custom},
        _service(account, ip, port,
                 {"app.kubernetes.io/name": app, "app.kubernetes.io/instance": name}),
        _service_monitor(account),
    ]  # fmt: skip


def _argo_rollouts_monitor() -> dict[str, Any]:
    """The Argo Rollouts controller's metrics (``rollout_info``, which the alert
    ModelServingPinNotServed reads), scraped as a platform running the controller scrapes them
    (its Helm chart's ServiceMonitor): its install manifest's Service ``argo-rollouts-metrics``,
    with honorLabels, so that a sample's ``namespace`` is the Rollout's, not the controller's
    (as kube-prometheus scrapes kube-state-metrics)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta("argo-rollouts"),
        "spec": {"namespaceSelector": {"matchNames": ["argo-rollouts"]},
                 "selector": {"matchLabels": {"app.kubernetes.io/name": "argo-rollouts-metrics"}},
                 "endpoints": [{"port": "metrics", "interval": "30s", "honorLabels": True}]},
    }  # fmt: skip


def prometheus_objects() -> list[dict[str, Any]]:
    account = f"prometheus-{PROMETHEUS_NAME}"
    discovery = ["get", "list", "watch"]
    rules = [
        {"apiGroups": [""], "resources": ["pods", "services", "endpoints"], "verbs": discovery},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": discovery},
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
    ]
    # empty selectors: every PodMonitor, ServiceMonitor, Probe and rule, in every namespace
    selectors: dict[str, dict[str, Any]] = {
        f"{kind}{part}": {}
        for kind in ("podMonitor", "serviceMonitor", "probe", "rule")
        for part in ("Selector", "NamespaceSelector")
    }
    alerting = {"alertmanagers": [{"namespace": NAMESPACE, "port": "web",
                                   "name": f"alertmanager-{ALERTMANAGER_NAME}"}]}  # fmt: skip
    return [
        _service_account(account),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": account}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": account},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": account},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]},
        *_operated("Prometheus", PROMETHEUS_NAME, PROMETHEUS, PROMETHEUS_SERVICE_IP,
                   PROMETHEUS_PORT, retention="1d",  # a local cluster lives for a run or a day
                   resources={"requests": {"cpu": "50m", "memory": "200Mi"},
                              "limits": {"memory": "1Gi"}},
                   scrapeInterval="15s", evaluationInterval="15s",
                   serviceDiscoveryRole="EndpointSlice", **selectors, alerting=alerting),
        _argo_rollouts_monitor(),
    ]  # fmt: skip


def alertmanager_config() -> dict[str, Any]:
    """Every alert to the receiver, grouped by namespace and alert name."""
    hook = f"http://{RECEIVER}.{NAMESPACE}.svc:{ALERT_RECEIVER_PORT}/alerts"
    return {
        "route": {"receiver": RECEIVER, "group_by": ["namespace", "alertname"],
                  **LOCAL_ROUTE_TIMERS},
        "receivers": [{"name": RECEIVER,
                       "webhook_configs": [{"url": hook, "send_resolved": True}]}],
    }  # fmt: skip


def alertmanager_objects() -> list[dict[str, Any]]:
    name = f"alertmanager-{ALERTMANAGER_NAME}"
    return [
        _service_account(name),
        # the operator reads the configuration from Secret alertmanager-<name>
        {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(name), "type": "Opaque",
         "stringData": {"alertmanager.yaml": yaml.safe_dump(alertmanager_config(),
                                                            sort_keys=False)}},
        *_operated("Alertmanager", ALERTMANAGER_NAME, ALERTMANAGER, ALERTMANAGER_SERVICE_IP,
                   ALERTMANAGER_PORT, retention="24h",
                   resources={"requests": {"cpu": "10m", "memory": "30Mi"},
                              "limits": {"memory": "200Mi"}}),
    ]  # fmt: skip


def receiver_objects() -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": RECEIVER}
    box = {
        "name": RECEIVER,
        "image": ALERT_RECEIVER.ref,
        "imagePullPolicy": "Never",
        "args": ["-listen", f":{ALERT_RECEIVER_PORT}", "-keep", str(RECEIVER_KEEPS)],
        "ports": [{"name": "web", "containerPort": ALERT_RECEIVER_PORT}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "web"}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "5m", "memory": "10Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": _CONTAINER_SECURITY,
    }  # fmt: skip
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(RECEIVER, labels=labels),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"automountServiceAccountToken": False, "containers": [box],
                         "securityContext": _POD_SECURITY},
            },
        },
    }  # fmt: skip
    return [deployment, _service(RECEIVER, ALERT_RECEIVER_SERVICE_IP, ALERT_RECEIVER_PORT, labels)]


def objects() -> list[dict[str, Any]]:
    """Everything but the CRDs, in the order applied."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    return [namespace, *operator_objects(), *prometheus_objects(), *alertmanager_objects(),
            *receiver_objects()]  # fmt: skip


# -- up ------------------------------------------------------------------------------------
def apply(layout: Layout) -> None:
    """The CRDs (established), then everything else; the operator's pods start meanwhile."""
    kubectl = layout.kubectl()
    names = []
    for crd in crds():
        kubectl.apply([crd])
        names.append(f"crd/{crd['metadata']['name']}")
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *names, timeout=70)
    kubectl.apply(objects())


def wait(layout: Layout, timeout: float) -> None:
    """The operator and the receiver rolled out, then the StatefulSets the operator makes
    for Prometheus and Alertmanager, then each answering on its fixed cluster IP."""
    kubectl = layout.kubectl()
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(deadline - time.monotonic(), 10)

    kubectl.rolled_out(NAMESPACE, "deployment/prometheus-operator", left())
    kubectl.rolled_out(NAMESPACE, f"deployment/{RECEIVER}", left())
    for statefulset in (f"prometheus-{PROMETHEUS_NAME}", f"alertmanager-{ALERTMANAGER_NAME}"):
        made = partial(kubectl.exists, NAMESPACE, "statefulset", statefulset)
        wait_until(f"the operator to create statefulset/{statefulset}", made, left())
        kubectl.rolled_out(NAMESPACE, f"statefulset/{statefulset}", left())
    for what, base in (("Prometheus", prometheus.url()), ("Alertmanager", alertmanager_url())):
        wait_until(f"{what} ready at {base}", partial(_ready, base), left())


def _ready(base: str) -> bool:
    try:
        return requests.get(f"{base}/-/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False
