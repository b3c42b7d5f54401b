"""Fixtures shared by the pipeline-common tests."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import hvac
import pytest

from pipeline_common.settings import VaultSettings
from pipeline_ops.local_env import LocalEnvironment
from pipeline_ops.local_platform import LocalPlatform


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers; put them back afterwards so
    a handler writing to a closed test stream never outlives its test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def vault_admin(platform: LocalPlatform) -> hvac.Client:
    """The dev server's root token: used only to set up a test's preconditions."""
    return hvac.Client(url=platform.service("vault").url, token=platform.vault_root_token())


@pytest.fixture
def vault_settings(local_env: LocalEnvironment) -> Callable[..., VaultSettings]:
    """VaultSettings of ``stage`` exactly as its environment would give them, with overrides
    (field names, e.g. path_auth=...)."""

    def build(stage: str, **overrides: Any) -> VaultSettings:
        values: dict[str, Any] = {
            key.removeprefix("VAULT_").lower(): value
            for key, value in local_env.stage_env(stage).items()
        }
        values.update(overrides)
        return VaultSettings(**values)

    return build
