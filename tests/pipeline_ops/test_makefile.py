"""The Makefile's promise to a user without root (a GitHub-hosted runner's user, a laptop):
what needs root stops before doing any work and says how to run it; what a pull request
needs runs without root."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from pipeline_ops.paths import PROJECT_ROOT
from pipeline_ops.validate.checks import makefile_root_targets

NOBODY = 65534


def _make_as_a_user(*targets: str) -> subprocess.CompletedProcess[str]:
    """The project's Makefile run by the real make as uid 65534 (nobody) when this test runs
    as root, from a copy in a folder that user may read (a clone may sit in a private one)."""
    prefix = []
    if os.geteuid() == 0:
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        shutil.copy(PROJECT_ROOT / "Makefile", folder)
        return subprocess.run(
            [*prefix, "make", "--no-print-directory", *targets],
            cwd=folder, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip


@pytest.mark.parametrize("target", ["images", "cluster-up", "cluster-run", "test"])
def test_a_target_that_needs_root_stops_at_once_and_says_how_to_run_it(target: str):
    result = _make_as_a_user(target)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"make {target}: starts the project's Docker engine or the local cluster" in (
        result.stderr
    )
    assert f'sudo -E env PATH="$PATH" make {target}' in result.stderr
    # it stopped before its first prerequisite: no recipe ran, so make printed no command
    assert result.stdout == ""


def test_the_root_targets_are_those_that_start_the_engine_or_the_cluster():
    needing = makefile_root_targets(PROJECT_ROOT / "Makefile")
    assert {"test", "images", "image-test", "engine-up", "cluster-up", "cluster-run"} <= needing
    # what a pull request needs, and the local platform, need no root
    assert not needing & {"test-checks", "setup", "lint", "validate", "run", "up", "chromium"}
