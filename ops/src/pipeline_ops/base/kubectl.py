"""One client of a cluster's API server: ``Kubectl``, bound to a kubeconfig and to the
kubectl (and Argo Rollouts plugin) binaries, calling them through ``commands.run``.

It knows the few shapes every caller needs (apply objects server-side, get one object, list
objects, wait for a workload to roll out, the plugin) and nothing about our cluster: the
cluster's layout makes one (``Layout.kubectl()``), tests may give it a fake runner through
``commands.using``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline_ops.base import commands
from pipeline_ops.base.errors import CommandError


class Kubectl:
    def __init__(self, kubeconfig: Path, kubectl: Path, plugin: Path | None = None):
        self.kubeconfig = kubeconfig
        self.binary = kubectl
        self.plugin_binary = plugin

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        """``kubectl ARGS``; its stdout."""
        return commands.output(
            [self.binary, "--kubeconfig", self.kubeconfig, *args], what="kubectl",
            stdin=stdin, timeout=timeout,
        )  # fmt: skip

    def apply(
        self,
        objects: Iterable[Mapping[str, Any]] | str,
        *,
        namespace: str | None = None,
        force_conflicts: bool = True,
        timeout: float = 120,
    ) -> str:
        """Server-side apply of ``objects`` (dicts, or a manifest's text)."""
        if isinstance(objects, str):
            manifest = objects
        else:
            manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        where = ["-n", namespace] if namespace else []
        force = ["--force-conflicts"] if force_conflicts else []
        return self(*where, "apply", "--server-side", *force, "-f", "-", stdin=manifest,
                    timeout=timeout)  # fmt: skip

    def get(self, namespace: str, kind: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self("-n", namespace, "get", kind, name, "-o", "json")))

    def exists(self, namespace: str, kind: str, name: str) -> bool:
        found = self("-n", namespace, "get", kind, name, "--ignore-not-found", "-o", "name")
        return bool(found.strip())

    def items(self, namespace: str, kind: str, *selector: str) -> list[dict[str, Any]]:
        """Objects of ``kind`` in ``namespace`` (every namespace if empty) matching ``selector``."""
        # after the verb: kubectl takes an unknown flag before it (--all-namespaces belongs to
        # `get`) for the start of a plugin's name, and fails
        where = ["-n", namespace] if namespace else ["--all-namespaces"]
        return list(json.loads(self("get", kind, *where, *selector, "-o", "json"))["items"])

    def rolled_out(self, namespace: str, workload: str, timeout: float) -> None:
        """Wait for ``workload`` (``deployment/NAME``, ``daemonset/NAME``) to roll out; on
        failure the error carries the end of its pods' description."""
        try:
            self("-n", namespace, "rollout", "status", workload, f"--timeout={int(timeout)}s",
                 timeout=timeout + 10)  # fmt: skip
        except CommandError as error:
            try:
                pods = commands.tail(self("-n", namespace, "describe", "pods"))
            except CommandError as described:
                pods = str(described)
            raise CommandError(f"{workload} in {namespace} did not become ready: {error}\n"
                               f"{pods}") from error  # fmt: skip

    def rollouts(self, namespace: str, *args: str, timeout: float = 120) -> str:
        """``kubectl argo rollouts ARGS`` (the plugin, as users run it)."""
        if self.plugin_binary is None:
            raise CommandError("kubectl argo rollouts: the plugin is not built; "
                               "run `make cluster-binaries`")  # fmt: skip
        return commands.output(
            [self.plugin_binary, "--kubeconfig", self.kubeconfig, "-n", namespace, *args],
            what="kubectl argo rollouts", timeout=timeout,
        )  # fmt: skip
