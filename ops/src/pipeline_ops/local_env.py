"""Wire the running local platform to the stages, the way a cluster would.

Configures the dev Vault with the same layout as production (but the jwt auth method),
writes each stage's secret with the local servers' addresses, signs a service-account
style token per stage, and gives the environment a stage process needs. A stage started
with that environment is configured exactly as it is in a pod: only VAULT_* variables.
"""

from __future__ import annotations

import os
from pathlib import Path

import hvac

from pipeline_contracts.registry import DEFAULT_MODEL_NAME
from pipeline_ops.local_platform import LocalPlatform
from pipeline_ops.paths import LOCAL_DIR
from pipeline_ops.stages import VAULT_IDENTITIES, SecretPart, secret_parts
from pipeline_ops.vault_bootstrap import LocalIdentities, VaultLayout, bootstrap_vault

LOCAL_AUTH_MOUNT = "jwt"
MONGO_DATABASE = "github"
MODEL_NAME = DEFAULT_MODEL_NAME


class LocalEnvironment:
    def __init__(self, platform: LocalPlatform, data_dir: Path | None = None):
        self.platform = platform
        self.layout = VaultLayout.load()
        self.identities = LocalIdentities(platform.state_dir / "vault" / "identities", self.layout)
        self.data_dir = Path(data_dir or LOCAL_DIR / "data")

    def stage_secrets(self) -> dict[str, dict[str, str]]:
        """What each stage's Vault secret holds locally (production values are set by
        operators through the bootstrap's --secrets-file)."""
        return stage_secrets(
            mongo_uri=f"mongodb://127.0.0.1:{self.platform.service('mongo').port}/",
            mlflow_uri=self.platform.service("mlflow").url,
            features_uri=str(self.data_dir / "features"),
            github_token=os.environ.get("GITHUB_TOKEN"),
        )

    def configure_vault(self) -> None:
        vault = self.platform.service("vault")
        client = hvac.Client(url=vault.url, token=self.platform.vault_root_token())
        bootstrap_vault(
            client,
            self.layout,
            auth="jwt",
            auth_mount=LOCAL_AUTH_MOUNT,
            jwt_public_key=self.identities.public_key_pem(),
            secrets=self.stage_secrets(),
        )
        for stage in self.layout.stages:
            self.identities.issue_token(stage)

    def stage_env(self, stage: str) -> dict[str, str]:
        """The VAULT_* contract for ``stage`` against the local Vault."""
        return {
            "VAULT_ADDR": self.platform.service("vault").url,
            "VAULT_AUTH_METHOD": "jwt",
            "VAULT_PATH_AUTH": f"auth/{LOCAL_AUTH_MOUNT}",
            "VAULT_ROLE": stage,
            "VAULT_SECRET_PATH": self.layout.secret_path(stage),
            "VAULT_TOKEN_FILE": str(self.identities.token_file(stage)),
        }


def stage_secrets(
    *,
    mongo_uri: str,
    mlflow_uri: str,
    features_uri: str,
    s3: dict[str, str] | None = None,
    github_token: str | None = None,
    git_write_token: str | None = None,
) -> dict[str, dict[str, str]]:
    """Each Vault identity's secret (the keys its settings read), for servers at these
    addresses; ``s3`` (the ``s3_*`` keys) when ``features_uri`` is ``s3://``;
    ``git_write_token`` for the GitOps repository's writer (model-pin), where there is one."""
    parts: dict[SecretPart, dict[str, str]] = {
        "mongo": {"mongo_uri": mongo_uri, "mongo_database": MONGO_DATABASE},
        "features": {"features_uri": features_uri, **(s3 or {})},
        "mlflow": {"mlflow_tracking_uri": mlflow_uri, "model_name": MODEL_NAME},
        # optional: without it data-fetch replays the bundled sample
        "github-token": {"github_token": github_token} if github_token else {},
        "git-write": {"github_token": git_write_token} if git_write_token else {},
    }
    return {
        name: {k: v for part in secret_parts(name) for k, v in parts[part].items()}
        for name in VAULT_IDENTITIES
    }
