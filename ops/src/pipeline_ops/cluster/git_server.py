"""The git server Argo CD reads: ``git daemon`` on the bridge address pods reach
(``git://198.19.0.1:9418/<repo>.git``), read-only (no receive-pack), serving the bare
repositories under ``.local/cluster/git``. ``pr-anomaly.git`` receives this repository's
branches at every ``cluster-up`` (new ones and fast-forwards, never a force: what the
cluster run merged, pinned and promoted stays; `python -m pipeline_ops.cluster git-sync` by
hand); tests add their own bare repositories beside it and push to them by path.

Beside it, GitHub's contents API for ``pr-anomaly.git`` under the GitHub name of this
repository (``pipeline_ops.github_contents_server``, ``http://198.19.0.1:9419``): how a
delivered component writes git, as it does on GitHub, with a token (a file of the cluster's
state, 0600, seeded into that component's Vault secret).
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path

from pipeline_ops.base import commands
from pipeline_ops.base.errors import CommandError
from pipeline_ops.cluster.layout import BRIDGE_IP, GIT_PORT, GITHUB_CONTENTS_PORT, Layout
from pipeline_ops.paths import PROJECT_ROOT

log = logging.getLogger(__name__)

PROJECT_REPOSITORY = "pr-anomaly.git"
# its name on GitHub, which the manifests (PIN_REPOSITORY) and the Applications carry
GITHUB_NAME = "pr-anomaly-mlops/pr-anomaly-mlops"


def base_path(layout: Layout) -> Path:
    return layout.dir("git")


def url(repository: str) -> str:
    """The repository's URL as pods (Argo CD's repo-server) reach it."""
    return f"git://{BRIDGE_IP}:{GIT_PORT}/{repository}"


def command(layout: Layout) -> list[str]:
    root = str(base_path(layout))
    return [
        "git", "daemon", "--reuseaddr", "--export-all", "--informative-errors",
        f"--base-path={root}", f"--listen={BRIDGE_IP}", f"--port={GIT_PORT}", root,
    ]  # fmt: skip


def git(*args: str, cwd: Path | None = None) -> str:
    """``git ARGS`` (in ``cwd``); its output (an error carries git's own message)."""
    return commands.output(["git", *args], what="git", cwd=cwd, timeout=120).strip()


def init_bare(layout: Layout, repository: str) -> Path:
    path = base_path(layout) / repository
    if not (path / "HEAD").exists():
        git("init", "--quiet", "--bare", "--initial-branch=main", str(path))
    return path


def sync_project(layout: Layout) -> list[str]:
    """This repository's branches (not its worktrees' state) pushed to pr-anomaly.git as a
    developer pushes to GitHub: new branches and fast-forwards only. A branch the server
    moved on (``staging`` and ``main`` after a run: pins, promotions, reverts) keeps its
    history, as GitHub's would; none is deleted. The branches it now holds."""
    bare = init_bare(layout, PROJECT_REPOSITORY)
    pushed = commands.run(["git", "push", "--porcelain", str(bare), "refs/heads/*:refs/heads/*"],
                          what="git push", cwd=PROJECT_ROOT, timeout=120, check=False)  # fmt: skip
    kept = [line.split("\t")[1].partition(":")[2].removeprefix("refs/heads/")
            for line in pushed.stdout.splitlines()
            if line.startswith("!\t")]  # fmt: skip
    if pushed.returncode != 0 and not kept:
        raise CommandError(f"git push to {bare}: {commands.tail(pushed.stderr)}")
    if kept:
        log.info("git server: kept %s (it has commits this checkout lacks)", " ".join(kept))
    return git("--git-dir", str(bare), "for-each-ref", "--format=%(refname:short)",
                "refs/heads").split()  # fmt: skip


def contents_url() -> str:
    """GitHub's REST API for the project repository, as pods reach it here."""
    return f"http://{BRIDGE_IP}:{GITHUB_CONTENTS_PORT}"


def contents_token(layout: Layout) -> str:
    """The token the contents API accepts (made once per cluster state, kept 0600)."""
    path = layout.root / "github-contents.token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def contents_command(layout: Layout) -> list[str]:
    contents_token(layout)
    repository = init_bare(layout, PROJECT_REPOSITORY)
    return [
        sys.executable, "-m", "pipeline_ops.github_contents_server",
        "--token-file", str(layout.root / "github-contents.token"),
        "--repository", f"{GITHUB_NAME}={repository}",
        "--bind", BRIDGE_IP, "--port", str(GITHUB_CONTENTS_PORT),
    ]  # fmt: skip
