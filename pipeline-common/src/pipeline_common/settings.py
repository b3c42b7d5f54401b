"""Typed settings, validated at start, with errors that say what to fix.

Stages describe their non-secret configuration as ``pydantic-settings`` classes (read from
the environment) and their secret configuration as plain pydantic models (read from the
stage's Vault secret). Both go through :func:`load_settings` / :func:`parse_secret`, which
turn pydantic's validation errors into one readable message that never echoes an input
value, so a mistyped secret cannot leak into a log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

SettingsT = TypeVar("SettingsT", bound=BaseSettings)
ModelT = TypeVar("ModelT", bound=BaseModel)

DEFAULT_SA_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it and how to fix it."""


def _describe_errors(error: ValidationError, model: type[BaseModel], *, source: str) -> str:
    # pydantic reports an aliased field by its alias: map it back to the field.
    by_alias = {
        f.validation_alias: name
        for name, f in model.model_fields.items()
        if isinstance(f.validation_alias, str)
    }
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        field_name = str(item["loc"][0]) if item["loc"] else "?"
        field_name = by_alias.get(field_name, field_name)
        field = model.model_fields.get(field_name)
        alias = (
            field.validation_alias if field and isinstance(field.validation_alias, str) else None
        )
        name = alias or field_name
        if source == "environment" and not alias:
            prefix = (
                model.model_config.get("env_prefix", "") if issubclass(model, BaseSettings) else ""
            )
            name = f"{prefix}{field_name}".upper()
        hint = f" ({field.description})" if field and field.description else ""
        lines.append(f"  - {name}: {item['msg']}{hint}")
    return f"invalid configuration in the {source}:\n" + "\n".join(lines)


def load_settings(cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Build ``cls`` from the environment (and explicit overrides), or raise ConfigError."""
    try:
        return cls(**overrides)
    except ValidationError as error:
        raise ConfigError(_describe_errors(error, cls, source="environment")) from None
    except SettingsError as error:
        # A list/dict setting whose environment value is not valid JSON: pydantic-settings
        # fails before validation, naming only the field.
        match = re.search(r'field "([^"]+)"', str(error))
        name = f"{cls.model_config.get('env_prefix', '')}{match.group(1) if match else '?'}"
        raise ConfigError(
            f"invalid configuration in the environment:\n  - {name.upper()}: cannot be "
            "parsed; a list or mapping setting must be given as JSON"
        ) from None


def parse_secret(cls: type[ModelT], values: Mapping[str, Any], *, where: str) -> ModelT:
    """Validate a secret read from Vault at ``where``, or raise ConfigError naming the keys."""
    try:
        return cls.model_validate(dict(values))
    except ValidationError as error:
        raise ConfigError(_describe_errors(error, cls, source=f"Vault secret {where}")) from None


def secret_path_parts(value: str) -> list[str]:
    """``secret/mlops/data-fetch`` or its API form ``secret/data/mlops/data-fetch`` as
    [mount, *path]."""
    parts = [p for p in value.strip().strip("/").split("/") if p]
    if len(parts) >= 3 and parts[1] == "data":
        parts = [parts[0], *parts[2:]]
    return parts


AuthMethod = Literal["kubernetes", "jwt", "approle", "token"]


class VaultSettings(BaseSettings):
    """How a stage reaches Vault: the same contract in every stage and every environment."""

    model_config = SettingsConfigDict(env_prefix="VAULT_", extra="ignore")

    addr: str = Field(description="Vault server URL, e.g. https://vault.example:8200")
    auth_method: AuthMethod = Field(
        default="kubernetes",
        description="one of kubernetes, jwt, approle, token",
    )
    path_auth: str = Field(
        default="kubernetes",
        description="mount path of the auth method, e.g. kubernetes or auth/kubernetes",
    )
    role: str = Field(default="", description="Vault role of this stage, e.g. data-fetch")
    secret_path: str = Field(
        description="KV v2 path of this stage's secret, e.g. secret/mlops/data-fetch"
    )

    @field_validator("secret_path")
    @classmethod
    def _mount_and_path(cls, value: str) -> str:
        """Checked at start, before any login: an empty or one-part path is a setting to
        fix, not a Vault failure."""
        if len(secret_path_parts(value)) < 2:
            raise ValueError("must be MOUNT/PATH, e.g. secret/mlops/data-fetch")
        return value

    token_file: str = Field(
        default=DEFAULT_SA_TOKEN_FILE,
        description="file holding the service-account JWT for kubernetes/jwt auth",
    )
    token: SecretStr | None = Field(default=None, description="Vault token for token auth")
    role_id: str | None = Field(default=None, description="AppRole role_id for approle auth")
    secret_id: SecretStr | None = Field(
        default=None, description="AppRole secret_id for approle auth"
    )
    timeout_seconds: float = Field(default=10.0, gt=0, description="HTTP timeout for Vault")
    cacert: str = Field(
        default="",
        description="PEM file of the CA that signed Vault's certificate (https VAULT_ADDR); "
        "empty: the system's CAs",
    )
