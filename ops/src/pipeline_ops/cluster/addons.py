"""What runs inside the cluster: CoreDNS (the cluster's DNS at 198.19.128.10), the Argo
Rollouts controller (from the install manifest its Go module ships, with our image), and
kube-network-policies (NetworkPolicy enforcement: the bridge CNI enforces none), a
host-network DaemonSet without upstream's hostPath mounts (containerd 1.6 has no NRI) that
judges the connections on its nfqueue; its own nftables rules never get in on this kernel
(no `queue` expression), so the host's iptables hand it the pods' new connections
(``Host.queue_pod_connections``).

CoreDNS answers for ``cluster.local`` and reverse zones only: no ``forward``, so no query
leaves the machine. It listens on 1053 as an unprivileged user; the Service maps 53 to it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline_ops.base import commands
from pipeline_ops.cluster import ClusterError
from pipeline_ops.cluster.images import ScratchImage
from pipeline_ops.cluster.layout import CLUSTER_DOMAIN, DNS_SERVICE_IP, Layout, binaries

PAUSE = ScratchImage("pr-anomaly.local/pause", "pause")
COREDNS = ScratchImage("pr-anomaly.local/coredns", "coredns")
ARGO_ROLLOUTS = ScratchImage("pr-anomaly.local/argo-rollouts", "rollouts-controller")
ARGO_ROLLOUTS_MODULE = "github.com/argoproj/argo-rollouts"
NETWORK_POLICIES = ScratchImage("pr-anomaly.local/kube-network-policies", "kube-network-policies")
NETWORK_POLICIES_QUEUE = 98  # the nfqueue it reads the pods' new connections from
IMAGES = (PAUSE, COREDNS, ARGO_ROLLOUTS, NETWORK_POLICIES)
# What `status` reports beside the processes: name -> (namespace, kind/name).
WORKLOADS = {
    "coredns": ("kube-system", "deployment/coredns"),
    "prometheus-operator": ("monitoring", "deployment/prometheus-operator"),
    "prometheus": ("monitoring", "statefulset/prometheus-k8s"),
    "alertmanager": ("monitoring", "statefulset/alertmanager-main"),
    "alert-receiver": ("monitoring", "deployment/alert-receiver"),
    "argo-rollouts": ("argo-rollouts", "deployment/argo-rollouts"),
    "argocd-server": ("argocd", "deployment/argocd-server"),
    "argocd-repo-server": ("argocd", "deployment/argocd-repo-server"),
    "argocd-redis": ("argocd", "deployment/argocd-redis"),
    "spark-operator-controller": ("spark-operator", "deployment/spark-operator-controller"),
    "spark-operator-webhook": ("spark-operator", "deployment/spark-operator-webhook"),
}

COREDNS_PORT = 1053  # in the pod; the Service maps 53 to it
COREFILE = f""".:{COREDNS_PORT} {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
    reload
}}
"""


def _coredns_objects() -> list[dict]:
    labels = {"k8s-app": "kube-dns"}
    meta = {"name": "coredns", "namespace": "kube-system"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": COREFILE}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {**meta, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "dnsPolicy": "Default",
                        "priorityClassName": "system-cluster-critical",
                        "containers": [
                            {
                                "name": "coredns",
                                "image": COREDNS.ref,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {
                                        "name": "dns",
                                        "containerPort": COREDNS_PORT,
                                        "protocol": "UDP",
                                    },
                                    {
                                        "name": "dns-tcp",
                                        "containerPort": COREDNS_PORT,
                                        "protocol": "TCP",
                                    },
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": 8181},
                                    "periodSeconds": 2,
                                },
                                "livenessProbe": {
                                    "httpGet": {"path": "/health", "port": 8080},
                                    "initialDelaySeconds": 10,
                                },
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "30Mi"},
                                    "limits": {"memory": "170Mi"},
                                },
                                "securityContext": {
                                    "runAsNonRoot": True,
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                },
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "selector": labels,
                "clusterIP": DNS_SERVICE_IP,
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": COREDNS_PORT, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "targetPort": COREDNS_PORT, "protocol": "TCP"},
                ],
            },
        },
    ]


def apply_coredns(layout: Layout, timeout: float) -> None:
    layout.kubectl().apply(_coredns_objects())
    layout.kubectl().rolled_out("kube-system", "deployment/coredns", timeout)


def module_dir(module: str, version: str) -> Path:
    """The source of a Go module (install manifests, CRDs), from the Go module cache."""
    listing = commands.output(["go", "mod", "download", "-json", f"{module}@{version}"],
                              what=f"the source of {module}@{version}")  # fmt: skip
    return Path(json.loads(listing)["Dir"])


def apply_argo_rollouts(layout: Layout, timeout: float) -> None:
    version = binaries()[ARGO_ROLLOUTS.binary].version
    manifest = (
        module_dir(ARGO_ROLLOUTS_MODULE, version) / "manifests" / "install.yaml"
    ).read_text()
    upstream_image = "image: quay.io/argoproj/argo-rollouts:latest"
    if upstream_image not in manifest:
        raise ClusterError(f"argo-rollouts: {upstream_image!r} not in its install.yaml")
    manifest = manifest.replace(upstream_image, f"image: {ARGO_ROLLOUTS.ref}").replace(
        "imagePullPolicy: Always", "imagePullPolicy: Never"
    )
    kubectl = layout.kubectl()
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "argo-rollouts"}}
    kubectl.apply([namespace], force_conflicts=False)
    kubectl.apply(manifest, namespace="argo-rollouts")
    kubectl.rolled_out("argo-rollouts", "deployment/argo-rollouts", timeout)


def _network_policies_objects(metrics_port: int) -> list[dict]:
    name = "kube-network-policies"
    meta = {"name": name, "namespace": "kube-system"}
    labels = {"app": name}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods", "namespaces", "nodes"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["networking.k8s.io"],
                    "resources": ["networkpolicies"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "kube-system"}],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {**meta, "labels": labels},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "hostNetwork": True,
                        "serviceAccountName": name,
                        "priorityClassName": "system-node-critical",
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [
                            {
                                "name": name,
                                "image": NETWORK_POLICIES.ref,
                                "imagePullPolicy": "Never",
                                "args": [
                                    "--hostname-override=$(NODE_NAME)",
                                    "--disable-nri",
                                    f"--nfqueue-id={NETWORK_POLICIES_QUEUE}",
                                    f"--metrics-bind-address=127.0.0.1:{metrics_port}",
                                    "--v=1",
                                ],
                                "env": [
                                    {
                                        "name": "NODE_NAME",
                                        "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                                    }
                                ],
                                "securityContext": {
                                    "privileged": True,
                                    "runAsUser": 0,
                                    "runAsNonRoot": False,
                                },
                                "resources": {"requests": {"cpu": "50m", "memory": "50Mi"}},
                            }
                        ],
                    },
                },
            },
        },
    ]


def apply_network_policies(layout: Layout, metrics_port: int, timeout: float) -> None:
    layout.kubectl().apply(_network_policies_objects(metrics_port))
    layout.kubectl().rolled_out("kube-system", "daemonset/kube-network-policies", timeout)


# -- the node's capacity -------------------------------------------------------------------
# One node of 2 cores cannot hold what the environments request: model-serving asks 500m a
# replica (two, plus the preview), training a core, Spark a core per driver and executor,
# in each of staging and production. The manifests keep production's requests; this
# cluster admits the environments' pods with small requests instead (a
# MutatingAdmissionPolicy, Kubernetes' own CEL mutation: no webhook), limits untouched, so
# what a pod may use is what production allows and only the scheduler's arithmetic changes.
LOCAL_REQUESTS = {"cpu": "20m", "memory": "64Mi"}
CAPACITY_POLICY = "pr-anomaly-local-requests"


def capacity_policy_objects(namespaces: tuple[str, ...]) -> list[dict]:
    requests = ", ".join(f'"{k}": "{v}"' for k, v in LOCAL_REQUESTS.items())
    containers = (
        "object.spec.containers.map(c, Object.spec.containers{name: c.name, resources: "
        f"Object.spec.containers.resources{{requests: {{{requests}}}}}}})"
    )
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1beta1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": CAPACITY_POLICY},
        "spec": {
            "matchConstraints": {
                "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                   "operations": ["CREATE"], "resources": ["pods"]}],
            },
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "mutations": [{
                "patchType": "ApplyConfiguration",
                "applyConfiguration": {
                    "expression": f"Object{{spec: Object.spec{{containers: {containers}}}}}"
                },
            }],
        },
    }  # fmt: skip
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1beta1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": CAPACITY_POLICY},
        "spec": {
            "policyName": CAPACITY_POLICY,
            "matchResources": {
                "namespaceSelector": {
                    "matchExpressions": [{"key": "kubernetes.io/metadata.name",
                                          "operator": "In", "values": list(namespaces)}]
                }
            },
        },
    }  # fmt: skip
    return [policy, binding]


def apply_capacity_policy(layout: Layout, namespaces: tuple[str, ...]) -> None:
    layout.kubectl().apply(capacity_policy_objects(namespaces))
