"""One real cluster for every cluster test of the session (`make cluster-up`'s launcher and
state directory): reused if it is already up (and left up afterwards), else started here and
stopped when the session ends. Selected with ``-m cluster``; it needs root and the binaries of
`make cluster-binaries`. Each test gets its own namespace (fixture ``ns``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from kube_namespace import SMOKE, Namespace, wait_for

from pipeline_ops.cluster import images
from pipeline_ops.cluster.addons import kubectl
from pipeline_ops.cluster.launcher import Cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    started_here = bool(cluster.up())  # {} when it was already up and healthy
    try:
        images.ensure_imported(cluster.layout, [SMOKE])
        yield cluster
    finally:
        if started_here:
            cluster.down()


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[Namespace]:
    name = f"smoke-{secrets.token_hex(3)}"
    kubectl(cluster.layout, "create", "namespace", name)
    # pods need the namespace's default ServiceAccount
    wait_for(
        "default ServiceAccount",
        lambda: kubectl(cluster.layout, "-n", name, "get", "serviceaccounts", "-o", "name"),
        30,
    )
    try:
        yield Namespace(cluster, name)
    finally:
        kubectl(cluster.layout, "delete", "namespace", name, "--wait=false")
