"""Configure a Vault for the pipeline: secrets engine, per-stage policies, roles, secrets.

One role, one policy and one secret per stage of :mod:`pipeline_ops.stages`; the policy lets
the stage read its own secret and nothing else.

The same code configures the local dev server and a real Vault; only the auth method
differs. In a cluster each stage logs in with the ``kubernetes`` auth method using its
service account; locally the ``jwt`` auth method trusts a key pair generated here, and
:class:`LocalIdentities` signs service-account-shaped tokens with it.

Usage against a real Vault (as an operator, with an admin token)::

    VAULT_ADDR=https://vault.example:8200 VAULT_TOKEN=... \\
    python -m pipeline_ops.vault_bootstrap --auth kubernetes \\
        --kubernetes-host https://kubernetes.default.svc --secrets-file secrets.json

A Vault outside the cluster (a managed one, or the local cluster's) also needs the cluster's
CA (``--kubernetes-ca-cert-file``) and a reviewer token (``--token-reviewer-jwt-file``: a
service account bound to ``system:auth-delegator``) to check the pods' tokens with the
cluster's TokenReview API. ``--namespace`` (repeatable) binds the roles to the namespaces
the stages run in (default: the one in ``stages.yaml``).

``secrets.json`` maps a stage name to its key/value pairs; stages absent from it keep the
secret they have.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import hvac
import yaml

from pipeline_ops import stages as pipeline_stages
from pipeline_ops.paths import VAULT_CONFIG_DIR
from pipeline_ops.stages import VAULT_IDENTITIES

log = logging.getLogger(__name__)

BootstrapAuth = Literal["kubernetes", "jwt"]
LOCAL_ISSUER = "pipeline-local-platform"
LOCAL_AUDIENCE = "vault"


@dataclass(frozen=True)
class VaultLayout:
    """Where the stages' secrets live and how long their tokens last (``stages.yaml``), for
    the stages of :mod:`pipeline_ops.stages`: each has a role, a policy and a secret named as
    it, bound to its service account."""

    kv_mount: str
    secret_prefix: str
    namespace: str
    token_ttl: str
    token_max_ttl: str
    stages: tuple[str, ...] = VAULT_IDENTITIES  # the stages and the delivery jobs' own

    @classmethod
    def load(cls, config_dir: Path = VAULT_CONFIG_DIR) -> VaultLayout:
        raw = yaml.safe_load((config_dir / "stages.yaml").read_text())
        return cls(
            kv_mount=raw["kv_mount"],
            secret_prefix=raw["secret_prefix"],
            namespace=raw["namespace"],
            token_ttl=raw["token_ttl"],
            token_max_ttl=raw["token_max_ttl"],
        )

    def secret_path(self, stage: str) -> str:
        """The stage's secret as VAULT_SECRET_PATH spells it (MOUNT/PATH)."""
        return f"{self.kv_mount}/{self.secret_prefix}/{stage}"

    def service_account(self, stage: str) -> str:
        return pipeline_stages.service_account(stage)

    def subject(self, stage: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account(stage)}"

    def policy(self, stage: str) -> str:
        """The stage's policy: read its own KV v2 secret, nothing else. Renewing and looking
        up its own token come from Vault's built-in default policy."""
        path = f"{self.kv_mount}/data/{self.secret_prefix}/{stage}"
        return f'path "{path}" {{\n  capabilities = ["read"]\n}}\n'


def bootstrap_vault(
    client: hvac.Client,
    layout: VaultLayout,
    *,
    auth: BootstrapAuth,
    auth_mount: str | None = None,
    jwt_public_key: str | None = None,
    kubernetes_host: str | None = None,
    kubernetes_ca_cert: str | None = None,
    token_reviewer_jwt: str | None = None,
    namespaces: Sequence[str] | None = None,
    secrets: Mapping[str, Mapping[str, Any]] | None = None,
    token_ttl: str | None = None,
    token_max_ttl: str | None = None,
) -> None:
    """Idempotently apply ``layout`` to the Vault that ``client`` (an admin) talks to."""
    mount = auth_mount or auth
    # Check the arguments before changing anything, so a mistake leaves Vault as it was.
    if auth == "kubernetes" and not kubernetes_host:
        raise ValueError("--kubernetes-host is required for the kubernetes auth method")
    if auth == "jwt" and not jwt_public_key:
        raise ValueError("the jwt auth method needs the public key that signs the tokens")
    unknown = sorted(set(secrets or {}) - set(layout.stages))
    if unknown:
        raise ValueError(f"secrets name unknown stage(s) {unknown}; stages: {list(layout.stages)}")
    _ensure_kv_v2(client, layout.kv_mount)
    for stage in layout.stages:
        client.sys.create_or_update_policy(name=stage, policy=layout.policy(stage))

    enabled = client.sys.list_auth_methods()["data"]
    if f"{mount}/" not in enabled:
        client.sys.enable_auth_method(method_type=auth, path=mount)
    ttl = token_ttl or layout.token_ttl
    max_ttl = token_max_ttl or layout.token_max_ttl
    if auth == "kubernetes":
        config: dict[str, Any] = {"kubernetes_host": kubernetes_host}
        if kubernetes_ca_cert:
            config["kubernetes_ca_cert"] = kubernetes_ca_cert
        if token_reviewer_jwt:
            # Vault is not a pod of this cluster: it reviews tokens as this account, not
            # with a token of its own pod.
            config["token_reviewer_jwt"] = token_reviewer_jwt
            config["disable_local_ca_jwt"] = True
        client.write(f"auth/{mount}/config", **config)
        for stage in layout.stages:
            client.write(
                f"auth/{mount}/role/{stage}",
                bound_service_account_names=[layout.service_account(stage)],
                bound_service_account_namespaces=list(namespaces or [layout.namespace]),
                token_policies=[stage],
                token_ttl=ttl,
                token_max_ttl=max_ttl,
            )
    else:
        client.write(
            f"auth/{mount}/config",
            jwt_validation_pubkeys=[jwt_public_key],
            bound_issuer=LOCAL_ISSUER,
        )
        for stage in layout.stages:
            client.write(
                f"auth/{mount}/role/{stage}",
                role_type="jwt",
                user_claim="sub",
                bound_subject=layout.subject(stage),
                bound_audiences=[LOCAL_AUDIENCE],
                token_policies=[stage],
                token_ttl=ttl,
                token_max_ttl=max_ttl,
            )
    for stage, values in (secrets or {}).items():
        client.secrets.kv.v2.create_or_update_secret(
            path=f"{layout.secret_prefix}/{stage}",
            secret=dict(values),
            mount_point=layout.kv_mount,
        )
    log.info(
        "Vault configured",
        extra={
            "auth": auth,
            "stages": list(layout.stages),
            "secrets_written": sorted(secrets or {}),
        },
    )


def _ensure_kv_v2(client: hvac.Client, mount: str) -> None:
    engines = client.sys.list_mounted_secrets_engines()["data"]
    current = engines.get(f"{mount}/")
    if current is None:
        client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    elif current.get("type") != "kv" or (current.get("options") or {}).get("version") != "2":
        raise ValueError(f"{mount}/ is mounted but is not a KV v2 engine")


class LocalIdentities:
    """Stand-ins for Kubernetes service-account tokens: a key pair Vault's jwt method
    trusts, and one signed token per stage, kept under ``directory`` (mode 0600)."""

    def __init__(self, directory: Path, layout: VaultLayout):
        self.directory = Path(directory)
        self.layout = layout
        self.private_key_file = self.directory / "signing-key.pem"

    def public_key_pem(self) -> str:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        if not self.private_key_file.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            generated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = generated.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            self.private_key_file.touch(mode=0o600)
            self.private_key_file.write_bytes(pem)
        key = serialization.load_pem_private_key(self.private_key_file.read_bytes(), None)
        return (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def token_file(self, stage: str) -> Path:
        return self.directory / "tokens" / f"{stage}.jwt"

    def issue_token(self, stage: str, *, lifetime_seconds: int = 24 * 3600) -> Path:
        """Sign a token shaped like a projected service-account token for ``stage``."""
        import jwt

        self.public_key_pem()  # creates the key pair on first use
        now = int(time.time())
        claims = {
            "iss": LOCAL_ISSUER,
            "sub": self.layout.subject(stage),
            "aud": [LOCAL_AUDIENCE],
            "iat": now,
            "nbf": now,
            "exp": now + lifetime_seconds,
            "kubernetes.io": {
                "namespace": self.layout.namespace,
                "serviceaccount": {"name": self.layout.service_account(stage)},
            },
        }
        token = jwt.encode(claims, self.private_key_file.read_bytes(), algorithm="RS256")
        path = self.token_file(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(token)
        return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline_ops.vault_bootstrap",
        description="Configure Vault for the pipeline (needs VAULT_ADDR and an admin VAULT_TOKEN).",
    )
    parser.add_argument("--auth", choices=["kubernetes", "jwt"], default="kubernetes")
    parser.add_argument("--auth-mount", help="auth mount path (default: the method's name)")
    parser.add_argument("--kubernetes-host", help="API server URL, for --auth kubernetes")
    parser.add_argument(
        "--kubernetes-ca-cert-file", type=Path, help="the cluster CA (PEM), for a Vault outside it"
    )
    parser.add_argument(
        "--token-reviewer-jwt-file", type=Path,
        help="token of an account bound to system:auth-delegator (Vault outside the cluster)",
    )  # fmt: skip
    parser.add_argument(
        "--namespace", action="append", dest="namespaces",
        help="namespace the stages' service accounts live in (repeatable; default: stages.yaml)",
    )  # fmt: skip
    parser.add_argument("--jwt-public-key-file", type=Path, help="PEM key, for --auth jwt")
    parser.add_argument("--secrets-file", type=Path, help="JSON: {stage: {key: value}}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    addr, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
    if not addr or not token:
        print("error: set VAULT_ADDR and VAULT_TOKEN (an admin token)", file=sys.stderr)
        return 2
    secrets = json.loads(args.secrets_file.read_text()) if args.secrets_file else None
    bootstrap_vault(
        # VAULT_CACERT: the CA of an https Vault's certificate (else the system's CAs)
        hvac.Client(url=addr, token=token, verify=os.environ.get("VAULT_CACERT") or True),
        VaultLayout.load(),
        auth=args.auth,
        auth_mount=args.auth_mount,
        kubernetes_host=args.kubernetes_host,
        kubernetes_ca_cert=_read(args.kubernetes_ca_cert_file),
        token_reviewer_jwt=_read(args.token_reviewer_jwt_file),
        namespaces=args.namespaces,
        jwt_public_key=args.jwt_public_key_file.read_text() if args.jwt_public_key_file else None,
        secrets=secrets,
    )
    return 0


def _read(path: Path | None) -> str | None:
    return path.read_text().strip() if path else None


if __name__ == "__main__":
    sys.exit(main())
