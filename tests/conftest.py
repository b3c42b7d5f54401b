"""Shared fixtures: the real local platform, started once per test session.

The servers are the same ones `make up` starts (same launcher), in a temporary state
directory, on free ports, and stopped by pid at the end of the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline_ops.local_env import LocalEnvironment
from pipeline_ops.localstack import LocalPlatform


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlatform]:
    """Vault, MongoDB (FerretDB) and MLflow, running. S3 is started on demand (`s3` fixture)."""
    local = LocalPlatform(tmp_path_factory.mktemp("platform"))
    try:
        local.up(["vault", "mongo", "mlflow"])
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def local_env(
    platform: LocalPlatform, tmp_path_factory: pytest.TempPathFactory
) -> LocalEnvironment:
    """The platform with Vault bootstrapped: policies, jwt roles, stage secrets, tokens."""
    env = LocalEnvironment(platform, tmp_path_factory.mktemp("data"))
    env.configure_vault()
    return env


@pytest.fixture(scope="session")
def s3(platform: LocalPlatform):
    """A real S3-compatible server (SeaweedFS) on loopback."""
    platform.up(["s3"])
    return platform.service("s3")


@pytest.fixture
def stage_env(local_env: LocalEnvironment, monkeypatch: pytest.MonkeyPatch):
    """Set the VAULT_* contract of a stage in this process's environment."""

    def apply(stage: str) -> dict[str, str]:
        env = local_env.stage_env(stage)
        for key in [k for k in os.environ if k.startswith("VAULT_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return env

    return apply


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "samples"
