"""Fixtures shared by the ops tests."""

from __future__ import annotations

import hvac
import pytest

from pipeline_ops.local_platform import LocalPlatform


@pytest.fixture(scope="session")
def vault_admin(platform: LocalPlatform) -> hvac.Client:
    """The dev server's root token: used only to set up and inspect preconditions."""
    return hvac.Client(url=platform.service("vault").url, token=platform.vault_root_token())
