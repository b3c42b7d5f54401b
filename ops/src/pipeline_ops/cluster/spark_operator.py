"""The Spark Operator (kubeflow spark-operator v2.4.0): its controller and its webhook in
namespace ``spark-operator``, watching the environments' namespaces (``mlops``,
``mlops-production``) and ``spark-jobs`` (where the cluster tests submit, with the ``spark``
ServiceAccount drivers run as).

Upstream ships a Helm chart and no helm is here: the objects are written below after the
chart's defaults (its templates are in the Go module's source), and the CRDs come from the
module (``config/crd/bases``), read at run time. The operator's image is the spark-preprocess
image (it carries pyspark's spark-submit, which the controller runs) plus the operator's
binary; driver and executor pods run the spark-preprocess image itself, by digest. The
webhook makes its own certificate and writes the CA into its webhook configurations.
"""

from __future__ import annotations

import logging

import yaml

from pipeline_ops import stages
from pipeline_ops.cluster import ClusterError
from pipeline_ops.cluster.addons import module_dir
from pipeline_ops.cluster.engine_images import AddonImage, ensure_pushed_on
from pipeline_ops.cluster.layout import ENVIRONMENT_NAMESPACES, Layout, binaries
from pipeline_ops.cluster.registry import build_engine, in_registry, push_local, pushed

log = logging.getLogger(__name__)
# libyaml's safe loader: the install manifests are ~1 MB (pure Python takes seconds)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MODULE = "github.com/kubeflow/spark-operator/v2"
NAMESPACE = "spark-operator"
# the operator's own namespace for SparkApplications beside the environments' (the cluster
# tests' and make bench-scale's)
JOBS_NAMESPACE = "spark-jobs"
JOB_NAMESPACES = (*ENVIRONMENT_NAMESPACES, JOBS_NAMESPACE)
SPARK_SERVICE_ACCOUNT = "spark"  # in JOBS_NAMESPACE, for the tests' drivers
WEBHOOK = "spark-operator-webhook"
WEBHOOK_PORT = 9443
CERT_DIR = "/etc/k8s-webhook-server/serving-certs"  # the webhook writes its certificate here
SPARK_HOME = "/opt/venv/lib/python3.11/site-packages/pyspark"
OPERATOR = AddonImage(
    "spark-operator",
    "FROM {base}\nCOPY spark-operator /usr/local/bin/spark-operator\n"
    f"ENV SPARK_HOME={SPARK_HOME}\nUSER 10001\n"
    'ENTRYPOINT ["/usr/local/bin/spark-operator"]\n',
    ("spark-operator",),
)
SPARK_IMAGE = stages.image("spark-preprocess").name
# The operator's own Spark image (its smoke test's, in NAMESPACE): spark-preprocess's image in
# the add-ons' registry, which anyone may pull, as a public Spark image is.
SPARK_REPOSITORY = "spark"


def images(layout: Layout) -> tuple[str, str]:
    """The operator's image and the Spark image (spark-preprocess), by digest: as pushed
    before, or pushed now (spark-preprocess built by `make images` if the engine lacks it)."""
    record = pushed(layout)
    spark, operator = record.get(SPARK_REPOSITORY), record.get(OPERATOR.name)
    if spark and operator and in_registry(spark) and in_registry(operator):
        return operator, spark
    from pipeline_ops.images.build import build_images

    with build_engine() as engine:
        if engine.docker("image", "inspect", f"{SPARK_IMAGE}:local", check=False).returncode:
            log.info("building the %s image (`make images` for one image)", SPARK_IMAGE)
            build_images(engine, [SPARK_IMAGE])
        spark = push_local(layout, engine, f"{SPARK_IMAGE}:local", SPARK_REPOSITORY)
        operator = ensure_pushed_on(layout, OPERATOR, f"{SPARK_IMAGE}:local", engine)
    return operator, spark


def _crds() -> list[dict]:
    version = binaries()["spark-operator"].version
    bases = module_dir(MODULE, version) / "config" / "crd" / "bases"
    crds = [yaml.load(p.read_text(), Loader=_LOADER) for p in sorted(bases.glob("*.yaml"))]
    if not crds:
        raise ClusterError(f"spark-operator: no CRDs in {bases}")
    return crds


def _controller_rules() -> list[dict]:
    version = binaries()["spark-operator"].version
    path = module_dir(MODULE, version) / "config" / "rbac" / "role.yaml"
    rules = yaml.load(path.read_text(), Loader=_LOADER)["rules"]
    for rule in rules:  # the core group is "", which kubebuilder writes as an empty key
        rule["apiGroups"] = rule.get("apiGroups") or [""]
    # what spark-submit (fabric8, server-side apply) does to a driver's objects
    rules.append({"apiGroups": [""], "resources": ["services", "configmaps", "pods",
                                                  "persistentvolumeclaims"],
                  "verbs": ["get", "list", "watch", "create", "update", "patch", "delete",
                            "deletecollection"]})  # fmt: skip
    return [*rules,
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "verbs": ["create", "get", "update"]}]  # fmt: skip


def _binding(kind: str, name: str, namespace: str | None = None) -> dict:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": f"{kind}Binding",
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}],
    }


def _deployment(name: str, image: str, args: list[str], port: int, extra: dict) -> dict:
    labels = {"app.kubernetes.io/name": name}
    box = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "ports": [{"containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8081}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8081},
                          "initialDelaySeconds": 20},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
        "resources": {"requests": {"cpu": "50m", "memory": "100Mi"}},
        **extra.get("container", {}),
    }  # fmt: skip
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"serviceAccountName": name, "containers": [box], **extra.get("pod", {})},
            },
        },
    }


def _webhooks(kind: str) -> dict:
    namespaces = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In",
                                        "values": list(JOB_NAMESPACES)}]}  # fmt: skip

    def hook(name: str, path: str, group: str, resource: str, operations: list[str]) -> dict:
        return {
            "name": f"{name}.sparkoperator.k8s.io",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"service": {"name": WEBHOOK, "namespace": NAMESPACE,
                                         "port": WEBHOOK_PORT, "path": path}},
            "sideEffects": "NoneOnDryRun",
            "failurePolicy": "Fail",
            "namespaceSelector": namespaces,
            "rules": [{"apiGroups": [group], "apiVersions": ["v1" if not group else "v1beta2"],
                       "resources": [resource], "operations": operations}],
            "timeoutSeconds": 10,
        }  # fmt: skip

    apps = "sparkoperator.k8s.io"
    if kind == "Mutating":
        pods = hook("mutate--v1-pod", "/mutate--v1-pod", "", "pods", ["CREATE"])
        pods["objectSelector"] = {
            "matchLabels": {"sparkoperator.k8s.io/launched-by-spark-operator": "true"}
        }
        hooks = [
            pods,
            hook("mutate-sparkoperator-k8s-io-v1beta2-sparkapplication",
                 "/mutate-sparkoperator-k8s-io-v1beta2-sparkapplication", apps,
                 "sparkapplications", ["CREATE", "UPDATE"]),
            hook("mutate-sparkoperator-k8s-io-v1beta2-scheduledsparkapplication",
                 "/mutate-sparkoperator-k8s-io-v1beta2-scheduledsparkapplication", apps,
                 "scheduledsparkapplications", ["CREATE", "UPDATE"]),
        ]  # fmt: skip
    else:
        hooks = [
            hook("validate-sparkoperator-k8s-io-v1beta2-sparkapplication",
                 "/validate-sparkoperator-k8s-io-v1beta2-sparkapplication", apps,
                 "sparkapplications", ["CREATE", "UPDATE"]),
            hook("validate-sparkoperator-k8s-io-v1beta2-scheduledsparkapplication",
                 "/validate-sparkoperator-k8s-io-v1beta2-scheduledsparkapplication", apps,
                 "scheduledsparkapplications", ["CREATE", "UPDATE"]),
        ]  # fmt: skip
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": f"{kind}WebhookConfiguration",
        "metadata": {"name": WEBHOOK},
        "webhooks": hooks,
    }


def _objects(operator_image: str) -> list[dict]:
    controller = "spark-operator-controller"
    namespaces = ",".join(JOB_NAMESPACES)
    common = ["--zap-log-level=info", f"--namespaces={namespaces}", "--leader-election=false"]
    objects: list[dict] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
        for n in (NAMESPACE, *JOB_NAMESPACES)
    ]
    objects += [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": n, "namespace": NAMESPACE}}
        for n in (controller, WEBHOOK)
    ]  # fmt: skip
    objects += [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": controller}, "rules": _controller_rules()},
        _binding("ClusterRole", controller),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": WEBHOOK}, "rules": [
             {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "update", "patch"]},
             {"apiGroups": ["admissionregistration.k8s.io"],
              "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
              "verbs": ["list", "watch"]},
             {"apiGroups": ["admissionregistration.k8s.io"],
              "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
              "resourceNames": [WEBHOOK], "verbs": ["get", "update"]},
             {"apiGroups": [""], "resources": ["pods", "resourcequotas"],
              "verbs": ["get", "list", "watch"]},
             {"apiGroups": ["sparkoperator.k8s.io"],
              "resources": ["sparkapplications", "sparkapplications/status",
                            "scheduledsparkapplications", "scheduledsparkapplications/status"],
              "verbs": ["get", "list", "watch"]},
         ]},
        _binding("ClusterRole", WEBHOOK),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": WEBHOOK, "namespace": NAMESPACE}, "rules": [
             {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
             {"apiGroups": [""], "resources": ["secrets"],
              "resourceNames": [f"{WEBHOOK}-certs"], "verbs": ["get", "update"]},
         ]},
        _binding("Role", WEBHOOK, NAMESPACE),
    ]  # fmt: skip
    # drivers in spark-jobs create their executors (pods), a Service and a ConfigMap
    objects += [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": SPARK_SERVICE_ACCOUNT, "namespace": JOBS_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": SPARK_SERVICE_ACCOUNT, "namespace": JOBS_NAMESPACE}, "rules": [
             {"apiGroups": [""],
              "resources": ["pods", "configmaps", "persistentvolumeclaims", "services"],
              "verbs": ["get", "list", "watch", "create", "update", "patch", "delete",
                        "deletecollection"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": SPARK_SERVICE_ACCOUNT, "namespace": JOBS_NAMESPACE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": SPARK_SERVICE_ACCOUNT},
         "subjects": [{"kind": "ServiceAccount", "name": SPARK_SERVICE_ACCOUNT,
                       "namespace": JOBS_NAMESPACE}]},
    ]  # fmt: skip
    objects.append(
        _deployment(
            controller, operator_image,
            ["controller", "start", *common, "--enable-ui-service=false", "--enable-metrics=true",
             "--metrics-bind-address=:8080", "--controller-threads=4"],
            8080, {},
        )
    )  # fmt: skip
    objects.append(
        _deployment(
            WEBHOOK, operator_image,
            ["webhook", "start", *common, f"--webhook-secret-name={WEBHOOK}-certs",
             f"--webhook-secret-namespace={NAMESPACE}", f"--webhook-svc-name={WEBHOOK}",
             f"--webhook-svc-namespace={NAMESPACE}", f"--webhook-port={WEBHOOK_PORT}",
             f"--mutating-webhook-name={WEBHOOK}", f"--validating-webhook-name={WEBHOOK}"],
            WEBHOOK_PORT,
            {"container": {"volumeMounts": [{"name": "certs", "mountPath": CERT_DIR}]},
             "pod": {"volumes": [{"name": "certs", "emptyDir": {}}]}},
        )
    )  # fmt: skip
    objects.append(
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": WEBHOOK, "namespace": NAMESPACE},
         "spec": {"selector": {"app.kubernetes.io/name": WEBHOOK},
                  "ports": [{"port": WEBHOOK_PORT, "targetPort": WEBHOOK_PORT}]}}
    )  # fmt: skip
    objects += [_webhooks("Mutating"), _webhooks("Validating")]
    return objects


def apply(layout: Layout) -> str:
    """Apply the operator; the Spark image's reference by digest (for SparkApplications)."""
    operator_image, spark_image = images(layout)
    for crd in _crds():
        layout.kubectl().apply([crd])
    layout.kubectl().apply(_objects(operator_image))
    return spark_image


def wait(layout: Layout, timeout: float) -> None:
    for name in ("spark-operator-controller", WEBHOOK):
        layout.kubectl().rolled_out(NAMESPACE, f"deployment/{name}", timeout)
