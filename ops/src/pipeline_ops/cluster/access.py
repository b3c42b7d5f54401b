"""The ML team's access on this cluster: ``argo-apps/access`` applied as an administrator
applies it on a real one (``kubectl apply -k argo-apps/access``), for the user the cluster
run acts as (``pr-anomaly-user``, group ``pr-anomaly-mlops-users``, its own certificate).

Two local differences, both of the cluster's making, not the manifests': production runs in
a second namespace of this one cluster (so the pipeline namespace's Role is bound there too),
and the pipeline's namespaces exist before Argo CD's first sync labels them (as a platform
team creates a team's namespaces before granting access to them).
"""

from __future__ import annotations

import copy
from typing import Any

from pipeline_ops.cluster import gitops
from pipeline_ops.cluster.layout import ENVIRONMENT_NAMESPACES, STAGING_NAMESPACE, Layout
from pipeline_ops.paths import PROJECT_ROOT

ACCESS = PROJECT_ROOT / "argo-apps" / "access"


def objects() -> list[dict[str, Any]]:
    """argo-apps/access for this cluster: the pipeline namespace's grants in each
    environment's namespace, after the namespaces themselves."""
    namespaces = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        for namespace in ENVIRONMENT_NAMESPACES
    ]
    granted = []
    for obj in gitops.built(ACCESS):
        if obj["metadata"].get("namespace") != STAGING_NAMESPACE:
            granted.append(obj)
            continue
        for namespace in ENVIRONMENT_NAMESPACES:
            local = copy.deepcopy(obj)
            local["metadata"]["namespace"] = namespace
            granted.append(local)
    return [*namespaces, *granted]


def apply(layout: Layout) -> None:
    layout.kubectl().apply(objects(), force_conflicts=False)
