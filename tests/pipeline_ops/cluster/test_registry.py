"""The cluster's registries as production uses them: images pushed to them and pulled by the
kubelet by digest, as the manifests pin them; the project's own registry private, pulled
with the namespaces' pull secret."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests
from kube_namespace import SMOKE, Namespace, container, wait_for

from pipeline_ops.cluster import ClusterError, images, registry
from pipeline_ops.cluster.layout import PROJECT_REGISTRY, REGISTRY
from pipeline_ops.stages import REGISTRY_PULL_SECRET

ACCEPT = {"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                    "application/vnd.oci.image.manifest.v1+json"}  # fmt: skip

pytestmark = pytest.mark.cluster


def test_the_kubelet_pulls_an_image_pushed_over_the_registry_api_by_digest(ns: Namespace) -> None:
    reference = images.push(SMOKE, REGISTRY)
    assert "@sha256:" in reference
    url = ns.echo_server()
    phase, logs = ns.run_pod("pulled", ["get", url], image=reference)
    assert phase == "Succeeded", logs
    status = ns.get("pod", "pulled")["status"]["containerStatuses"][0]
    assert status["imageID"] == reference


def test_an_image_of_make_images_is_private_and_runs_with_the_pull_secret(ns: Namespace) -> None:
    """`python -m pipeline_ops.cluster push load-gate`: the engine's image, pushed by the
    workflows' script with the CI's login, is in the project's registry, which refuses
    anyone without a login; a pod without the pull secret cannot pull it, one with the
    secret the administrator makes runs it from ``127.0.0.1:5001/load-gate@sha256:…``."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline_ops.cluster", "push", "load-gate"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    name, arrow, reference = result.stdout.strip().splitlines()[-1].split()
    assert (name, arrow) == ("load-gate", "->")
    assert reference.startswith(f"{PROJECT_REGISTRY}/load-gate@sha256:")
    assert registry.pushed(ns.cluster.layout)["load-gate"] == reference
    repository, digest = reference.split("/", 1)[1].split("@")
    manifest = f"http://{PROJECT_REGISTRY}/v2/{repository}/manifests/{digest}"
    assert requests.head(manifest, timeout=5).status_code == 401
    assert (
        requests.head(
            manifest, timeout=5, headers=ACCEPT, auth=registry.login(ns.cluster.layout, "cluster")
        ).status_code
        == 200
    )

    # Always: the node may hold this digest already (a cluster run pulled it with the secret),
    # and IfNotPresent would start it without asking the registry.
    uncached = {**container("main", ["--help"], reference), "imagePullPolicy": "Always"}
    ns.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "no-secret"},
              "spec": {"restartPolicy": "Never", "containers": [uncached]}})  # fmt: skip
    wait_for("the pull without a login refused", lambda: _pull_refused(ns, "no-secret"), 120)
    events = ns.kubectl("get", "events", "--field-selector", "involvedObject.name=no-secret")
    assert "401" in events or "unauthorized" in events.lower(), events

    for secret in registry.pull_secrets(ns.cluster.layout)[:1]:
        ns.apply({**secret, "metadata": {"name": REGISTRY_PULL_SECRET}})
    phase, logs = ns.run_pod("load-gate", ["--help"], image=reference, timeout=180,
                             pull_secret=REGISTRY_PULL_SECRET)  # fmt: skip
    assert phase == "Succeeded", logs
    assert "usage: load-gate" in logs
    status = ns.get("pod", "load-gate")["status"]["containerStatuses"][0]
    assert status["imageID"] == reference


def _pull_refused(ns: Namespace, pod: str) -> bool:
    statuses = ns.get("pod", pod)["status"].get("containerStatuses") or [{}]
    waiting = statuses[0].get("state", {}).get("waiting", {})
    return waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff")


def test_pushing_an_image_that_was_never_built_names_the_fix(ns: Namespace) -> None:
    with pytest.raises(ClusterError, match=r"no image no-such-stage:local .*`make images`"):
        registry.push(ns.cluster.layout, ["no-such-stage:local"])
