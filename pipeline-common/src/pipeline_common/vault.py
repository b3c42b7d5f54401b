"""Read a stage's secret from Vault (KV v2) after logging in with the stage's identity.

In a cluster a stage logs in with the Kubernetes auth method using its service-account
token; locally the ``jwt`` auth method accepts a token signed by a generated key pair, and
CI may use AppRole or a plain token. Kubernetes and jwt logins share one request shape.

Secret values are wrapped in :class:`pydantic.SecretStr` as soon as they arrive and every
error raised here is built from paths and status codes only, so no secret reaches a log,
a repr or a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests
from pydantic import SecretStr

from pipeline_common.settings import (
    ModelT,
    VaultSettings,
    load_settings,
    parse_secret,
    secret_path_parts,
)

log = logging.getLogger(__name__)


class VaultError(RuntimeError):
    """Base class: something about Vault stopped the stage. The message says what to do."""


class VaultUnreachableError(VaultError):
    pass


class VaultAuthError(VaultError):
    pass


class VaultPermissionError(VaultError):
    pass


class SecretNotFoundError(VaultError):
    pass


class SecretKeyMissingError(VaultError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def auth_mount(path_auth: str) -> str:
    """The auth method's mount, however ``VAULT_PATH_AUTH`` spells it.

    ``kubernetes``, ``auth/kubernetes``, ``/v1/auth/kubernetes/login`` all mean the mount
    ``kubernetes``; the login request then goes to ``/v1/auth/kubernetes/login`` (never
    ``/v1/auth/auth/kubernetes/login``).
    """
    parts = [p for p in path_auth.strip().split("/") if p]
    for prefix in ("v1", "auth"):
        if parts[:1] == [prefix]:
            parts = parts[1:]
    if parts[-1:] == ["login"]:
        parts = parts[:-1]
    mount = "/".join(parts)
    if not mount:
        raise VaultError(f"VAULT_PATH_AUTH={path_auth!r} names no auth mount; e.g. kubernetes")
    return mount


@dataclass(frozen=True)
class SecretPath:
    """A KV v2 secret: the engine's mount and the path inside it."""

    mount: str
    path: str

    @classmethod
    def parse(cls, value: str) -> SecretPath:
        """``secret/mlops/data-fetch`` or its API form ``secret/data/mlops/data-fetch``."""
        parts = secret_path_parts(value)
        if len(parts) < 2:
            raise VaultError(
                f"VAULT_SECRET_PATH={value!r} must be MOUNT/PATH, e.g. secret/mlops/data-fetch"
            )
        return cls(mount=parts[0], path="/".join(parts[1:]))

    def __str__(self) -> str:
        return f"{self.mount}/{self.path}"


class StageSecret(Mapping[str, SecretStr]):
    """The key/value pairs of one secret; values stay masked until revealed."""

    def __init__(self, where: SecretPath, values: Mapping[str, Any]):
        self.where = where
        self._values = {k: SecretStr(str(v)) for k, v in values.items()}

    def __getitem__(self, key: str) -> SecretStr:
        try:
            return self._values[key]
        except KeyError:
            raise SecretKeyMissingError(
                f"key {key!r} is missing from Vault secret {self.where}; "
                f"it has {sorted(self._values)}. Add it with: "
                f"bao kv patch {self.where} {key}=..."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def reveal(self, key: str) -> str:
        return self[key].get_secret_value()

    def revealed(self) -> dict[str, str]:
        """Plain values, for validating into a stage's typed secret model."""
        return {k: v.get_secret_value() for k, v in self._values.items()}

    def __repr__(self) -> str:
        return f"StageSecret({self.where}, keys={sorted(self._values)})"


class VaultClient:
    """A logged-in Vault session for one stage."""

    def __init__(self, settings: VaultSettings):
        self.settings = settings
        self._client = hvac.Client(
            url=settings.addr, timeout=settings.timeout_seconds, verify=_trusted(settings)
        )
        # hvac falls back to $VAULT_TOKEN or ~/.vault-token (often an admin or dev root
        # token); a stage must only ever act with the token its own login returns.
        self._client.token = None
        self._token_expires_at: float | None = None
        self._token_ttl: float = 0.0

    def __repr__(self) -> str:
        s = self.settings
        return f"VaultClient(addr={s.addr}, method={s.auth_method}, role={s.role})"

    # -- login -----------------------------------------------------------------
    def login(self) -> VaultClient:
        s = self.settings
        try:
            if s.auth_method == "token":
                if s.token is None:
                    raise VaultAuthError("VAULT_AUTH_METHOD=token needs VAULT_TOKEN to be set")
                self._client.token = s.token.get_secret_value()
                auth = self._client.auth.token.lookup_self()["data"]
            elif s.auth_method == "approle":
                if not s.role_id or s.secret_id is None:
                    raise VaultAuthError(
                        "VAULT_AUTH_METHOD=approle needs VAULT_ROLE_ID and VAULT_SECRET_ID"
                    )
                auth = self._client.auth.approle.login(
                    role_id=s.role_id,
                    secret_id=s.secret_id.get_secret_value(),
                    mount_point=auth_mount(s.path_auth),
                )["auth"]
            else:
                auth = self._login_with_service_account()
        except hvac.exceptions.VaultError as error:
            raise VaultAuthError(self._refused(error)) from None
        except requests.exceptions.RequestException as error:
            raise self._unreachable(error) from None
        ttl = float(auth.get("lease_duration") or auth.get("ttl") or 0)
        self._token_ttl = ttl
        self._token_expires_at = time.monotonic() + ttl if ttl else None
        log.info("logged in to Vault", extra={"role": s.role, "method": s.auth_method})
        return self

    def _refused(self, error: hvac.exceptions.VaultError) -> str:
        s = self.settings
        why = f"({type(error).__name__}: {_vault_errors(error)})"
        if s.auth_method == "token":
            return f"Vault refused VAULT_TOKEN {why}: the token is unknown, expired or revoked."
        where = f"at auth mount {auth_mount(s.path_auth)!r}"
        if s.auth_method == "approle":
            return (
                f"Vault refused the approle login {where} {why}. Check VAULT_ROLE_ID, "
                "VAULT_SECRET_ID and VAULT_PATH_AUTH."
            )
        return (
            f"Vault refused the {s.auth_method} login for role {s.role!r} {where} {why}. "
            "Check VAULT_ROLE, VAULT_PATH_AUTH and that the role is bound to this "
            "service account."
        )

    def _login_with_service_account(self) -> dict[str, Any]:
        s = self.settings
        if not s.role:
            raise VaultAuthError(f"VAULT_AUTH_METHOD={s.auth_method} needs VAULT_ROLE")
        token_file = Path(s.token_file)
        try:
            jwt = token_file.read_text().strip()
        except OSError as error:
            raise VaultAuthError(
                f"cannot read the service-account token file {token_file} "
                f"({error.strerror}); set VAULT_TOKEN_FILE to the projected token's path"
            ) from None
        if not jwt:
            raise VaultAuthError(f"service-account token file {token_file} is empty")
        mount = auth_mount(s.path_auth)
        # The kubernetes and jwt methods take the same body at /v1/auth/MOUNT/login.
        response = self._client.adapter.post(
            f"/v1/auth/{mount}/login", json={"role": s.role, "jwt": jwt}
        )
        auth: dict[str, Any] = response["auth"]
        self._client.token = auth["client_token"]
        return auth

    # -- token lifetime ----------------------------------------------------------
    def ensure_token(self, min_remaining_fraction: float = 1 / 3) -> None:
        """Renew the token when less than a third of its life is left; log in again if
        it can no longer be renewed. Long jobs call this between units of work."""
        if self._token_expires_at is None:
            return
        remaining = self._token_expires_at - time.monotonic()
        if remaining > self._token_ttl * min_remaining_fraction:
            return
        try:
            renewed = self._client.auth.token.renew_self()["auth"]
            ttl = float(renewed.get("lease_duration") or 0)
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException):
            ttl = 0.0
        if ttl <= max(1.0, remaining):
            # Renewal hit the token's max TTL (or failed): a fresh login is the way on.
            log.info("Vault token at its max TTL; logging in again")
            self.login()
            return
        self._token_ttl = ttl
        self._token_expires_at = time.monotonic() + ttl
        log.info("renewed Vault token", extra={"ttl_seconds": ttl})

    # -- secrets -------------------------------------------------------------------
    def read_secret(self, path: str | None = None) -> StageSecret:
        where = SecretPath.parse(path or self.settings.secret_path)
        if not self._client.token:
            self.login()
        self.ensure_token()
        try:
            response = self._client.secrets.kv.v2.read_secret_version(
                path=where.path, mount_point=where.mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.Forbidden:
            raise VaultPermissionError(
                f"permission denied reading {where} as role {self.settings.role!r}: "
                "the role's policy does not grant read on this path"
            ) from None
        except hvac.exceptions.InvalidPath:
            raise SecretNotFoundError(
                f"no secret at {where}; write it (see ops bootstrap) or fix VAULT_SECRET_PATH"
            ) from None
        except hvac.exceptions.VaultError as error:
            raise VaultError(f"Vault failed reading {where} ({type(error).__name__})") from None
        except requests.exceptions.RequestException as error:
            raise self._unreachable(error) from None
        return StageSecret(where, response["data"]["data"])

    def _unreachable(self, error: Exception) -> VaultUnreachableError:
        if isinstance(error, requests.exceptions.SSLError):
            trusted = self.settings.cacert or "the system's CAs"
            return VaultUnreachableError(
                f"Vault at {self.settings.addr} refused TLS or its certificate is not trusted "
                f"by {trusted} ({type(error).__name__}); set VAULT_CACERT to the PEM file of "
                "the CA that signed Vault's certificate (in a cluster: the ConfigMap "
                "vault-ca, README: Vault over TLS)"
            )
        return VaultUnreachableError(
            f"cannot reach Vault at {self.settings.addr} ({type(error).__name__}); "
            "check VAULT_ADDR and that the server is running (locally: make up)"
        )


def _trusted(settings: VaultSettings) -> str | bool:
    """What checks Vault's certificate: VAULT_CACERT's file, else the system's CAs. A file
    that is not there is a setting to fix, said before any request."""
    if not settings.cacert:
        return True
    if not Path(settings.cacert).is_file():
        raise VaultUnreachableError(
            f"VAULT_CACERT={settings.cacert} is not a file: mount the CA that signed Vault's "
            "certificate there (in a cluster: create the ConfigMap vault-ca, README: Vault "
            "over TLS), or leave VAULT_CACERT empty when the system's CAs trust Vault"
        )
    return settings.cacert


def _vault_errors(error: hvac.exceptions.VaultError) -> str:
    errors = getattr(error, "errors", None)
    if isinstance(errors, list) and errors:
        return "; ".join(str(e) for e in errors)
    return "no detail"


def read_stage_secret(settings: VaultSettings | None = None) -> StageSecret:
    """Log in with the stage's identity and read its secret: the one call most stages need."""
    settings = settings or load_settings(VaultSettings)
    return VaultClient(settings).login().read_secret()


def load_stage_secret(model: type[ModelT], settings: VaultSettings | None = None) -> ModelT:
    """Read the stage's secret and validate it into ``model`` (a pydantic model whose
    fields are the secret's keys); errors name the missing or invalid keys, never values."""
    secret = read_stage_secret(settings)
    return parse_secret(model, secret.revealed(), where=str(secret.where))
