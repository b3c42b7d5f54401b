"""Settings errors name what to set and how, and never echo a value (it may be a secret)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline_common.settings import ConfigError, VaultSettings, load_settings, parse_secret

PLANTED = "sup3r-s3cret-value"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in [k for k in os.environ if k.startswith(("VAULT_", "DEMO_"))]:
        monkeypatch.delenv(key)
    return monkeypatch


class DemoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_")

    api_key: SecretStr = Field(min_length=32, description="API key of the demo service")
    workers: int = Field(default=2, ge=1, description="worker processes")
    hosts: list[str] = Field(default_factory=list, description="hosts to contact")
    token: SecretStr | None = Field(
        default=None, validation_alias="DEMO_ACCESS_TOKEN", description="access token"
    )


def test_missing_vault_settings_are_named_with_a_hint(clean_env: pytest.MonkeyPatch):
    with pytest.raises(ConfigError) as missing:
        load_settings(VaultSettings)

    message = str(missing.value)
    assert message.startswith("invalid configuration in the environment:")
    assert "VAULT_ADDR: Field required (Vault server URL" in message
    assert "VAULT_SECRET_PATH: Field required (KV v2 path of this stage's secret" in message
    assert "VAULT_ROLE" not in message  # it has a default: not reported


def test_vault_settings_from_the_environment(clean_env: pytest.MonkeyPatch):
    clean_env.setenv("VAULT_ADDR", "http://127.0.0.1:8200")
    clean_env.setenv("VAULT_SECRET_PATH", "secret/mlops/data-fetch")
    clean_env.setenv("VAULT_AUTH_METHOD", "jwt")

    settings = load_settings(VaultSettings)

    assert (settings.addr, settings.auth_method) == ("http://127.0.0.1:8200", "jwt")
    assert settings.path_auth == "kubernetes"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("VAULT_AUTH_METHOD", "kerberos", "one of kubernetes, jwt, approle, token"),
        ("VAULT_TIMEOUT_SECONDS", "-1", "greater than 0"),
        ("VAULT_TIMEOUT_SECONDS", "soon", "valid number"),
    ],
)
def test_invalid_vault_setting_is_named(
    clean_env: pytest.MonkeyPatch, variable: str, value: str, expected: str
):
    clean_env.setenv("VAULT_ADDR", "http://127.0.0.1:8200")
    clean_env.setenv("VAULT_SECRET_PATH", "secret/mlops/data-fetch")
    clean_env.setenv(variable, value)

    with pytest.raises(ConfigError) as invalid:
        load_settings(VaultSettings)

    assert f"  - {variable}: " in str(invalid.value)
    assert expected in str(invalid.value)


def test_a_wrong_secret_setting_is_never_echoed(clean_env: pytest.MonkeyPatch):
    clean_env.setenv("DEMO_API_KEY", PLANTED)  # too short: invalid

    with pytest.raises(ConfigError) as invalid:
        load_settings(DemoSettings)

    error = invalid.value
    assert "DEMO_API_KEY: Value should have at least 32 items" in str(error)
    assert "(API key of the demo service)" in str(error)
    assert PLANTED not in str(error)
    assert PLANTED not in repr(error)
    assert error.__cause__ is None
    assert error.__suppress_context__


def test_an_alias_is_reported_by_its_variable_name(clean_env: pytest.MonkeyPatch):
    with pytest.raises(ConfigError) as invalid:
        load_settings(DemoSettings, DEMO_ACCESS_TOKEN=12345, api_key="k" * 32)

    assert "  - DEMO_ACCESS_TOKEN: Input should be a valid string (access token)" in str(
        invalid.value
    )


def test_an_aliased_secret_key_is_reported_by_its_vault_key():
    class Keys(BaseModel):
        token: SecretStr = Field(validation_alias="github-token", description="GitHub token")

    with pytest.raises(ConfigError) as invalid:
        parse_secret(Keys, {}, where="secret/mlops/data-fetch")

    assert "  - github-token: Field required (GitHub token)" in str(invalid.value)


def test_a_malformed_list_setting_is_a_config_error(clean_env: pytest.MonkeyPatch):
    clean_env.setenv("DEMO_API_KEY", "k" * 32)
    clean_env.setenv("DEMO_HOSTS", f"[{PLANTED}")  # not JSON

    with pytest.raises(ConfigError) as invalid:
        load_settings(DemoSettings)

    assert "DEMO_HOSTS: cannot be parsed" in str(invalid.value)
    assert "JSON" in str(invalid.value)
    assert PLANTED not in str(invalid.value)


def test_overrides_win_over_the_environment(clean_env: pytest.MonkeyPatch):
    clean_env.setenv("DEMO_API_KEY", "k" * 32)
    clean_env.setenv("DEMO_WORKERS", "8")

    assert load_settings(DemoSettings, workers=3).workers == 3
    assert load_settings(DemoSettings).workers == 8


class StageKeys(BaseModel):
    mongo_uri: SecretStr = Field(description="MongoDB connection string")
    mongo_database: str = Field(description="database holding the pull requests")
    db_password: SecretStr = Field(min_length=40, description="database password")
    port: int = 27017


def test_parse_secret_names_the_missing_key_and_the_vault_path():
    with pytest.raises(ConfigError) as invalid:
        parse_secret(
            StageKeys,
            {"mongo_database": "github", "db_password": "p" * 40},
            where="secret/mlops/data-fetch",
        )

    message = str(invalid.value)
    assert message.startswith("invalid configuration in the Vault secret secret/mlops/data-fetch")
    assert "  - mongo_uri: Field required (MongoDB connection string)" in message
    assert "mongo_database" not in message


def test_parse_secret_never_echoes_an_invalid_value():
    values = {
        "mongo_uri": f"mongodb://app:{PLANTED}@db:27017/",
        "mongo_database": "github",
        "db_password": PLANTED,  # too short
        "port": PLANTED,  # not a number
    }
    with pytest.raises(ConfigError) as invalid:
        parse_secret(StageKeys, values, where="secret/mlops/data-fetch")

    message = str(invalid.value)
    assert "db_password: Value should have at least 40 items" in message
    assert "port: Input should be a valid integer" in message
    assert PLANTED not in message
    assert PLANTED not in repr(invalid.value)


def test_parse_secret_keeps_secret_values_masked():
    keys = parse_secret(
        StageKeys,
        {"mongo_uri": "mongodb://db/", "mongo_database": "github", "db_password": "p" * 40},
        where="secret/mlops/data-fetch",
    )

    assert keys.db_password.get_secret_value() == "p" * 40
    assert "p" * 40 not in repr(keys)
    assert "p" * 40 not in str(keys)
