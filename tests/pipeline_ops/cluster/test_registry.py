"""The cluster's registry as production uses one: images pushed to it and pulled from it by
the kubelet by digest, as the manifests pin them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from kube_namespace import SMOKE, Namespace

from pipeline_ops.cluster import ClusterError, images, registry
from pipeline_ops.cluster.layout import REGISTRY

pytestmark = pytest.mark.cluster


def test_the_kubelet_pulls_an_image_pushed_over_the_registry_api_by_digest(ns: Namespace) -> None:
    reference = images.push(SMOKE, REGISTRY)
    assert "@sha256:" in reference
    url = ns.echo_server()
    phase, logs = ns.run_pod("pulled", ["get", url], image=reference)
    assert phase == "Succeeded", logs
    status = ns.get("pod", "pulled")["status"]["containerStatuses"][0]
    assert status["imageID"] == reference


def test_an_image_of_make_images_runs_by_digest_after_docker_push(ns: Namespace) -> None:
    """`python -m pipeline_ops.cluster push load-gate`: the engine's image, pushed with
    `docker push`, runs in a pod from ``127.0.0.1:5000/load-gate@sha256:…``."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline_ops.cluster", "push", "load-gate"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    name, arrow, reference = result.stdout.strip().splitlines()[-1].split()
    assert (name, arrow) == ("load-gate", "->")
    assert reference.startswith(f"{REGISTRY}/load-gate@sha256:")
    assert registry.pushed(ns.cluster.layout)["load-gate"] == reference
    phase, logs = ns.run_pod("load-gate", ["--help"], image=reference, timeout=180)
    assert phase == "Succeeded", logs
    assert "usage: load-gate" in logs
    status = ns.get("pod", "load-gate")["status"]["containerStatuses"][0]
    assert status["imageID"] == reference


def test_pushing_an_image_that_was_never_built_names_the_fix(ns: Namespace) -> None:
    with pytest.raises(ClusterError, match=r"no image no-such-stage:local .*`make images`"):
        registry.push(ns.cluster.layout, ["no-such-stage:local"])
