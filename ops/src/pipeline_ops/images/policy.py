"""How the manifests run a container, read from argo-apps/base, not restated: the user and
group, a read-only root filesystem with the manifest's volumes as the only writable paths,
every capability dropped, no privilege escalation, the CPU and memory limits, and the plain
environment the manifest sets (``VAULT_*`` aside: the image tests give their own). For a
Spark application, the driver's or the executors' part of it, with the memory overhead
Spark on Kubernetes adds to a pod.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline_ops.base.errors import OpsError
from pipeline_ops.paths import PROJECT_ROOT
from pipeline_ops.validate.checks import walk_nodes

MANIFESTS = PROJECT_ROOT / "argo-apps" / "base"
# Spark on Kubernetes gives a pod memory + overhead: 40 % for Python applications.
SPARK_PYTHON_OVERHEAD = 0.4
SPARK_MIN_OVERHEAD_MB = 384


class NoManifest(OpsError):
    """No manifest in argo-apps/base runs what was asked for."""


@dataclass
class RunPolicy:
    """The parts of a pod spec that decide how its container runs."""

    user: int
    group: int
    read_only: bool
    writable: list[str]
    drop_all_capabilities: bool
    no_privilege_escalation: bool
    cpus: str
    memory_mb: int
    env: dict[str, str] = field(default_factory=dict)

    def docker_args(self) -> list[str]:
        args = [
            "--user", f"{self.user}:{self.group}", "--cpus", self.cpus,
            "--memory", f"{self.memory_mb}m",
        ]  # fmt: skip
        if self.read_only:
            args.append("--read-only")
        if self.drop_all_capabilities:
            args += ["--cap-drop", "ALL"]
        if self.no_privilege_escalation:
            args += ["--security-opt", "no-new-privileges"]
        return args


def documents() -> Iterator[dict[str, Any]]:
    for path in sorted(MANIFESTS.glob("*.yaml")):
        yield from (d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))


def memory_mb(quantity: str) -> int:
    """A Kubernetes (or JVM) memory quantity in MiB."""
    units = {
        "Ki": 1 / 1024,
        "Mi": 1,
        "Gi": 1024,
        "k": 1 / 1000,
        "M": 1,
        "G": 1000,
        "g": 1024,
        "m": 1,
    }
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(int(quantity) / 2**20)


def _cpus(quantity: str | int) -> str:
    text = str(quantity)
    return str(int(text[:-1]) / 1000) if text.endswith("m") else text


def _plain_env(entries: list[dict[str, Any]] | None) -> dict[str, str]:
    return {
        e["name"]: str(e["value"])
        for e in entries or []
        if "value" in e and not e["name"].startswith("VAULT_")
    }


def manifest_policy(image: str, spark_role: str = "driver") -> RunPolicy:
    """How argo-apps/base runs ``image``: its pod template, or for a Spark application the
    driver's or executors' part of it."""
    for document in documents():
        for node in walk_nodes(document):
            if node.get("image") == image and "driver" in node and "executor" in node:
                role = node[spark_role]
                pod, container = role.get("podSecurityContext", {}), role.get("securityContext", {})
                jvm_mb = memory_mb(str(role["memory"]))
                overhead = max(SPARK_MIN_OVERHEAD_MB, int(jvm_mb * SPARK_PYTHON_OVERHEAD))
                cpu = role.get("coreLimit", role.get("cores", 1))
                memory = f"{jvm_mb + overhead}Mi"
                return _policy(
                    pod, container, cpu, memory, role.get("volumeMounts"), role.get("env")
                )
            for spec_container in node.get("containers", []) or []:
                # a container whose `command` replaces the entrypoint (model-serving's image
                # as the champion job) runs another program: not the image's own workload
                if spec_container.get("image") == image and "command" not in spec_container:
                    limits = spec_container.get("resources", {}).get("limits", {})
                    return _policy(
                        node.get("securityContext", {}), spec_container.get("securityContext", {}),
                        limits.get("cpu", "1"), limits.get("memory", "512Mi"),
                        spec_container.get("volumeMounts"), spec_container.get("env"),
                    )  # fmt: skip
    raise NoManifest(f"no manifest in {MANIFESTS} runs the image {image!r}")


def _policy(pod, container, cpu, memory, mounts, env) -> RunPolicy:
    capabilities = container.get("capabilities", {}).get("drop", [])
    return RunPolicy(
        user=int(container.get("runAsUser", pod.get("runAsUser", 0))),
        group=int(container.get("runAsGroup", pod.get("runAsGroup", 0))),
        read_only=bool(container.get("readOnlyRootFilesystem", False)),
        writable=[m["mountPath"] for m in mounts or [] if not m.get("readOnly")],
        drop_all_capabilities="ALL" in capabilities,
        no_privilege_escalation=container.get("allowPrivilegeEscalation") is False,
        cpus=_cpus(cpu),
        memory_mb=memory_mb(str(memory)),
        env=_plain_env(env),
    )


def spark_role_spec(image: str, role: str) -> dict[str, Any]:
    """The ``driver`` or ``executor`` part of the SparkApplication that runs ``image``."""
    for document in documents():
        for node in walk_nodes(document):
            if node.get("image") == image and role in node:
                return dict(node[role])
    raise NoManifest(f"no Spark {role} for {image} in {MANIFESTS}")


def main_application_file(image: str) -> str:
    """The application file the SparkApplication of ``image`` runs."""
    for document in documents():
        for node in walk_nodes(document):
            if node.get("image") == image and "mainApplicationFile" in node:
                return str(node["mainApplicationFile"])
    raise NoManifest(f"no SparkApplication template for {image} in {MANIFESTS}")
