"""Argo CD in the cluster, from the install manifest its Go module ships (namespace argocd),
with the local images of engine_images pulled from the cluster's registry by digest.

Changed from upstream's manifest, and why: every image is ours (no registry outside is
reachable); the repo-server runs with ``ARGOCD_GPG_ENABLED=false`` (Debian's gpg has no agent
here: the repo-server crashes at start otherwise); dex (SSO), the ApplicationSet and the
notifications controllers are scaled to 0 (nothing here uses them: 3 pods and ~150 MB less).
The server, repo-server, application-controller and redis run as upstream configures them,
but for one setting of the local environment: Argo CD reads git every ``RECONCILIATION``
(upstream: 3 minutes, with a push webhook from GitHub making it immediate). Here nothing
sends that webhook, and a user's push must not wait minutes to be seen.
"""

from __future__ import annotations

import logging

import yaml

from pipeline_ops.cluster import ClusterError
from pipeline_ops.cluster.addons import module_dir
from pipeline_ops.cluster.engine_images import (
    ADDONS_BASE,
    ARGOCD,
    REDIS,
    ensure_pushed,
)
from pipeline_ops.cluster.layout import Layout, binaries
from pipeline_ops.cluster.registry import build_engine, in_registry, pushed

log = logging.getLogger(__name__)
# libyaml's safe loader: the install manifests are ~1 MB (pure Python takes seconds)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MODULE = "github.com/argoproj/argo-cd/v3"
NAMESPACE = "argocd"
SCALED_TO_ZERO = ("argocd-dex-server", "argocd-applicationset-controller",
                  "argocd-notifications-controller")  # fmt: skip
RECONCILIATION = "10s"  # argocd-cm timeout.reconciliation: the controller's and repo-server's
WAITED = (
    ("deployment", "argocd-redis"), ("deployment", "argocd-repo-server"),
    ("deployment", "argocd-server"), ("statefulset", "argocd-application-controller"),
)  # fmt: skip


def _objects(argocd_image: str, redis_image: str) -> list[dict]:
    version = binaries()["argocd"].version
    path = module_dir(MODULE, version) / "manifests" / "install.yaml"
    objects = [o for o in yaml.load_all(path.read_text(), Loader=_LOADER) if o]
    upstream = f"quay.io/argoproj/argocd:{version}"
    replaced = 0
    for obj in objects:
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "argocd-cm":
            obj["data"] = {**(obj.get("data") or {}), "timeout.reconciliation": RECONCILIATION,
                           "timeout.reconciliation.jitter": "0s"}  # fmt: skip
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        name = obj["metadata"]["name"]
        spec = obj["spec"]["template"]["spec"]
        if name in SCALED_TO_ZERO:
            obj["spec"]["replicas"] = 0
        for box in (*spec.get("initContainers", []), *spec["containers"]):
            image = box["image"]
            box["image"] = argocd_image if image == upstream else redis_image
            if image != upstream and "redis" not in image and name not in SCALED_TO_ZERO:
                raise ClusterError(f"argo-cd: unexpected image {image} in {name}")
            box["imagePullPolicy"] = "IfNotPresent"
            replaced += 1
            if name == "argocd-repo-server" and box["name"] == "argocd-repo-server":
                box.setdefault("env", []).append({"name": "ARGOCD_GPG_ENABLED", "value": "false"})
    if not replaced:
        raise ClusterError(f"argo-cd: no {upstream} image in {path}")
    return objects


def images(layout: Layout) -> tuple[str, str]:
    """Argo CD's and redis' references by digest: from the registry if pushed before (no
    engine needed), else built and pushed by the project's engine."""
    wanted = (ARGOCD, REDIS)
    known = [pushed(layout).get(image.tag(ADDONS_BASE.tag)) for image in wanted]
    if all(ref and in_registry(ref) for ref in known):
        return str(known[0]), str(known[1])
    with build_engine() as engine:
        refs = [ensure_pushed(layout, image, engine) for image in wanted]
    return refs[0], refs[1]


def apply(layout: Layout) -> None:
    argocd_image, redis_image = images(layout)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    layout.kubectl().apply([namespace], force_conflicts=False)
    layout.kubectl().apply(_objects(argocd_image, redis_image), namespace=NAMESPACE)


def wait(layout: Layout, timeout: float) -> None:
    for kind, name in WAITED:
        layout.kubectl().rolled_out(NAMESPACE, f"{kind}/{name}", timeout)
