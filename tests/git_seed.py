"""A bare GitOps repository seeded with one commit, for the tests of what writes to git (the
pin writer, the GitHub contents API, the promotion scripts), under a git config of its own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This process' environment without the host's git config or identity."""
    (tmp_path / "gitconfig").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return env | {"GIT_CONFIG_GLOBAL": str(tmp_path / "gitconfig"), "GIT_CONFIG_NOSYSTEM": "1",
                  **extra}  # fmt: skip


def seed_bare(bare: Path, seed: Path, branches: tuple[str, ...], env: dict[str, str]) -> Path:
    """``bare`` made with one commit (by ``seed``) of the files under ``seed`` on each of
    ``branches``; its HEAD is main."""
    identity = ["-c", "user.name=seed", "-c", "user.email=seed@localhost"]
    for command in (
        ["init", "--quiet", "--bare", "--initial-branch=main", str(bare)],
        ["-C", str(seed), "init", "--quiet"],
        ["-C", str(seed), "add", "."],
        ["-C", str(seed), *identity, "commit", "--quiet", "-m", "argo-apps/base"],
        *(["-C", str(seed), "push", "--quiet", str(bare), f"HEAD:refs/heads/{branch}"]
          for branch in branches),
    ):  # fmt: skip
        subprocess.run(["git", *command], env=env, check=True, capture_output=True)
    return bare
