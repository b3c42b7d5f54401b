"""The repository as the checks see it: paths, tools and the rendered manifests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from pipeline_ops.base import commands

BASE = Path("argo-apps/base")
ARGOCD = Path("argo-apps/argocd")
ACCESS = Path("argo-apps/access")  # the ML team's RBAC, applied once by an administrator
SCHEMAS = Path("argo-apps/schemas")
WORKFLOWS = Path(".github/workflows")
# The reusable workflow every stage workflow calls to build, test, push and bump one image.
STAGE_IMAGE_WORKFLOW = "stage-image.yml"
# The VAULT_* settings of a workload: where Vault is, the same for all (from the one ConfigMap
# of vault.env), and who the workload is to Vault (its own, in its manifest).
VAULT_WHERE = ("VAULT_ADDR", "VAULT_CACERT", "VAULT_PATH_AUTH")
VAULT_WHO = ("VAULT_ROLE", "VAULT_SECRET_PATH")

# A workflow file as PyYAML reads it: its bare key `on` becomes the boolean True.
Workflow = dict[str | bool, Any]


class ToolMissing(RuntimeError):
    """A linter binary is not installed; `make setup` installs them all."""


@dataclass
class RepoTree:
    """A checkout (the real one, or a broken copy in a test) and where its tools are."""

    root: Path
    tools_bin: Path | None = None
    _rendered: dict[Path, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    def tool(self, name: str) -> str:
        """Absolute path of a tool: the project's .tools/bin, then the venv, then PATH."""
        candidates = [self.tools_bin / name] if self.tools_bin else []
        candidates.append(Path(sys.executable).parent / name)
        for candidate in candidates:
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        found = shutil.which(name)
        if found:
            return found
        raise ToolMissing(f"{name} is not installed: run `make setup`")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A checker's run in the repository; its result, pass or fail (the check reads it)."""
        return commands.run(
            args, what=f"validate: {Path(args[0]).name}", cwd=self.root, check=False, timeout=120
        )

    def build(self, kustomization: Path) -> list[dict[str, Any]]:
        """`kustomize build` of a directory; raises ValueError with kustomize's message."""
        if kustomization not in self._rendered:
            result = self.run(self.tool("kustomize"), "build", str(kustomization))
            if result.returncode != 0:
                raise ValueError(result.stderr.strip() or result.stdout.strip())
            docs = [d for d in yaml.safe_load_all(result.stdout) if d]
            self._rendered[kustomization] = docs
        return self._rendered[kustomization]

    @cached_property
    def base_objects(self) -> list[dict[str, Any]]:
        return self.build(BASE)

    @cached_property
    def kustomization(self) -> dict[str, Any]:
        return load_yaml(self.root / BASE / "kustomization.yaml")

    def workflows(self) -> dict[Path, Workflow]:
        folder = self.root / WORKFLOWS
        return {p: load_yaml(p) for p in sorted(folder.glob("*.y*ml"))}

    def dockerfiles(self) -> list[Path]:
        return sorted(
            p
            for p in self.root.rglob("Dockerfile*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        )

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def workflow_triggers(workflow: Workflow) -> dict[str, Any]:
    # PyYAML reads the bare key `on` as the boolean True.
    triggers = workflow.get("on", workflow.get(True, {}))
    if isinstance(triggers, str):
        return {triggers: {}}
    if isinstance(triggers, list):
        return {key: {} for key in triggers}
    return triggers or {}


def stage_image_calls(workflow: Workflow) -> list[dict[str, Any]]:
    """The `with:` of every job that calls the reusable stage-image workflow."""
    calls = []
    for job in (workflow.get("jobs") or {}).values():
        if str(job.get("uses", "")).endswith(f"/{STAGE_IMAGE_WORKFLOW}"):
            calls.append(job.get("with") or {})
    return calls
