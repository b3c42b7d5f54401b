"""One real cluster for every cluster test of the session (`make cluster-up`'s launcher and
state directory): reused if it is already up (and left up afterwards), else started here and
stopped right after the last cluster test (so that the tests after them, such as the
engine's, which restart dockerd and check the host's forwarding sysctl, find the host as it
was). Marked ``cluster`` (``-m "not cluster"`` leaves them out); they need root and the
binaries of `make cluster-binaries`. Each test gets its own namespace (fixture ``ns``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_namespace import SMOKE, Namespace, wait_for

from pipeline_ops.cluster import images
from pipeline_ops.cluster.launcher import Cluster

HERE = Path(__file__).parent
_started_here: list[Cluster] = []


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        timings = cluster.up()  # {} when it was already up and healthy
    except Exception:
        # A start that failed half-way was this session's (a healthy cluster is reused
        # without starting anything): stop what it started rather than leave it running.
        cluster.down()
        raise
    if timings:
        _started_here.append(cluster)
        print(f"\ncluster started for the tests in {timings['total']:.0f}s")
    try:
        images.ensure_imported(cluster.layout, [SMOKE])
        yield cluster
    finally:
        _stop_if_started_here()


def _stop_if_started_here() -> None:
    while _started_here:
        _started_here.pop().down()


@pytest.hookimpl(trylast=True)  # after the test's own fixtures (its namespace) are torn down
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if nextitem is None or HERE not in Path(nextitem.path).parents:
        _stop_if_started_here()


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[Namespace]:
    name = f"smoke-{secrets.token_hex(3)}"
    cluster.layout.kubectl()("create", "namespace", name)
    # pods need the namespace's default ServiceAccount
    wait_for(
        "default ServiceAccount",
        lambda: cluster.layout.kubectl()("-n", name, "get", "serviceaccounts", "-o", "name"),
        30,
    )
    try:
        yield Namespace(cluster, name)
    finally:
        cluster.layout.kubectl()("delete", "namespace", name, "--wait=false")
