"""What the cluster tests do in their namespace (the ``ns`` fixture): apply manifests, read
objects, run the smoke image as a server or a one-off pod."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from pipeline_ops.cluster import images
from pipeline_ops.cluster.launcher import Cluster

SMOKE = images.ScratchImage("pr-anomaly.local/smoke", "smoke")


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 90) -> Any:
    """``probe()``'s first true value; an AssertionError naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    value: Any = None
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not {what} after {timeout:.0f}s; last seen: {str(value)[-2000:]}")


def container(name: str, args: list[str], image: str | None = None) -> dict:
    """A container of the smoke image (or ``image``, pulled from the registry), meeting Pod
    Security's `restricted` profile, which our environments' namespaces enforce."""
    return {
        "name": name,
        "image": image or SMOKE.ref,
        "imagePullPolicy": "IfNotPresent" if image else "Never",
        "args": args,
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


class Namespace:
    """A test's own namespace in the cluster, and what the tests do in it."""

    def __init__(self, cluster: Cluster, name: str):
        self.cluster, self.name = cluster, name

    def kubectl(self, *args: str, **kwargs) -> str:
        return self.cluster.layout.kubectl()("-n", self.name, *args, **kwargs)

    def apply(self, *manifests: dict) -> None:
        for manifest in manifests:
            manifest.setdefault("metadata", {}).setdefault("namespace", self.name)
            self.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))

    def get(self, kind: str, name: str) -> dict:
        return json.loads(self.kubectl("get", kind, name, "-o", "json"))

    def echo_server(
        self, name: str = "echo", body: str | None = None, annotations: dict | None = None
    ) -> str:
        """Deployment ``name`` (answers with its pod's name, or ``body``, on container port
        ``http``, 8080) behind Service ``name`` (80 -> 8080), rolled out; the Service's URL."""
        labels = {"app": name}
        args = ["serve", "8080", *([body] if body is not None else [])]
        box = {**container(name, args), "ports": [{"name": "http", "containerPort": 8080}]}
        self.apply(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name},
                "spec": {
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels, "annotations": annotations or {}},
                        "spec": {"containers": [box]},
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name},
                "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
            },
        )
        self.kubectl("rollout", "status", f"deployment/{name}", "--timeout=90s", timeout=100)
        return f"http://{name}.{self.name}.svc.cluster.local/"

    def run_pod(
        self,
        name: str,
        args: list[str],
        labels: dict | None = None,
        image: str | None = None,
        timeout: float = 90,
        pull_secret: str | None = None,
    ) -> tuple[str, str]:
        """Run a pod to completion (its image pulled with ``pull_secret``, if any): its phase
        and logs."""
        spec: dict = {"restartPolicy": "Never", "containers": [container("main", args, image)]}
        if pull_secret:
            spec["imagePullSecrets"] = [{"name": pull_secret}]
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": labels or {}},
                "spec": spec,
            }
        )

        def finished() -> str:
            phase = self.get("pod", name)["status"].get("phase", "")
            return phase if phase in ("Succeeded", "Failed") else ""

        phase = wait_for(f"pod {name} finished", finished, timeout)
        return phase, self.kubectl("logs", name)
