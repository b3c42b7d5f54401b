"""A stage's Vault session against the real dev server (OpenBao) configured by the bootstrap:
logins per auth method, per-stage access, errors a person can act on, token lifetime, and
secret values that never reach a log, a repr or an exception."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
from pydantic import BaseModel

from pipeline_common.cli import EXIT_CONFIG, EXIT_VAULT, run_stage
from pipeline_common.logging import configure_logging
from pipeline_common.settings import ConfigError, VaultSettings
from pipeline_common.vault import (
    SecretKeyMissingError,
    SecretNotFoundError,
    SecretPath,
    VaultAuthError,
    VaultClient,
    VaultError,
    VaultPermissionError,
    VaultUnreachableError,
    auth_mount,
    load_stage_secret,
    read_stage_secret,
)
from pipeline_ops.base.processes import free_port
from pipeline_ops.local_env import LocalEnvironment
from pipeline_ops.vault_bootstrap import bootstrap_vault

PLANTED = "sup3r-s3cret-value"
OWN = "data-fetch"
OTHER = "ml-training"

Settings = Callable[..., VaultSettings]


# -- logging in and reading -------------------------------------------------------------


def test_stage_reads_its_own_secret(vault_settings: Settings, local_env: LocalEnvironment):
    secret = VaultClient(vault_settings(OWN)).login().read_secret()

    expected = local_env.stage_secrets()[OWN]
    assert str(secret.where) == "secret/mlops/data-fetch"
    assert {key: secret.reveal(key) for key in expected} == expected


def test_stage_is_denied_another_stages_secret(vault_settings: Settings):
    client = VaultClient(vault_settings(OWN)).login()

    with pytest.raises(VaultPermissionError) as denied:
        client.read_secret(f"secret/mlops/{OTHER}")

    message = str(denied.value)
    assert "permission denied" in message
    assert f"secret/mlops/{OTHER}" in message
    assert repr(OWN) in message


def test_the_environment_contract_alone_is_enough(stage_env, local_env: LocalEnvironment):
    """What a pod gets: only VAULT_* variables; no settings object built by hand."""
    stage_env(OWN)

    class FetchKeys(BaseModel):
        mongo_uri: str
        mongo_database: str

    keys = load_stage_secret(FetchKeys)

    assert keys.mongo_database == local_env.stage_secrets()[OWN]["mongo_database"]
    assert keys.mongo_uri == local_env.stage_secrets()[OWN]["mongo_uri"]


def test_read_without_explicit_login_ignores_home_and_env_tokens(
    vault_settings: Settings, platform, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """hvac would otherwise act with $VAULT_TOKEN / ~/.vault-token (here: the root token)
    instead of logging in as the stage, and read what the stage must not see."""
    (tmp_path / ".vault-token").write_text(platform.vault_root_token())
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("VAULT_TOKEN", platform.vault_root_token())
    client = VaultClient(vault_settings(OWN))

    assert client.read_secret().reveal("mongo_database")  # logged in as the stage
    with pytest.raises(VaultPermissionError):
        client.read_secret(f"secret/mlops/{OTHER}")


def test_a_signed_token_of_another_stage_is_refused(
    vault_settings: Settings, local_env: LocalEnvironment
):
    settings = vault_settings(OWN, token_file=str(local_env.identities.token_file(OTHER)))

    with pytest.raises(VaultAuthError) as refused:
        VaultClient(settings).login()

    assert f"jwt login for role {OWN!r}" in str(refused.value)


# -- errors that say what to fix ------------------------------------------------------------


def test_garbage_token_file_is_refused_with_a_clear_message(
    vault_settings: Settings, tmp_path: Path
):
    token_file = tmp_path / "token"
    token_file.write_text("not-a-jwt-" + PLANTED)

    with pytest.raises(VaultAuthError) as refused:
        VaultClient(vault_settings(OWN, token_file=str(token_file))).login()

    message = str(refused.value)
    assert message.startswith("Vault refused the jwt login for role 'data-fetch'")
    assert "auth mount 'jwt'" in message
    assert "VAULT_ROLE" in message
    assert "VAULT_PATH_AUTH" in message
    assert PLANTED not in message


def test_missing_token_file_names_the_file(vault_settings: Settings, tmp_path: Path):
    missing = tmp_path / "nowhere" / "token"

    with pytest.raises(VaultAuthError) as refused:
        VaultClient(vault_settings(OWN, token_file=str(missing))).login()

    assert str(missing) in str(refused.value)
    assert "No such file or directory" in str(refused.value)
    assert "VAULT_TOKEN_FILE" in str(refused.value)


def test_empty_token_file_is_reported(vault_settings: Settings, tmp_path: Path):
    empty = tmp_path / "token"
    empty.write_text("\n")

    with pytest.raises(VaultAuthError, match=re.escape(f"token file {empty} is empty")):
        VaultClient(vault_settings(OWN, token_file=str(empty))).login()


def test_unreachable_vault_names_the_address(vault_settings: Settings):
    addr = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    with pytest.raises(VaultUnreachableError) as unreachable:
        VaultClient(vault_settings(OWN, addr=addr, timeout_seconds=3)).login()

    assert f"cannot reach Vault at {addr}" in str(unreachable.value)
    assert "VAULT_ADDR" in str(unreachable.value)


def test_missing_key_names_the_key_and_the_path(vault_settings: Settings):
    secret = VaultClient(vault_settings(OWN)).login().read_secret()

    with pytest.raises(SecretKeyMissingError) as missing:
        secret.reveal("github_app_key")

    message = str(missing.value)
    assert "'github_app_key'" in message
    assert "secret/mlops/data-fetch" in message
    assert "mongo_uri" in message  # the keys it does have, to spot a typo
    assert isinstance(missing.value, KeyError)
    assert "github_app_key" not in secret


def test_absent_secret_is_reported_as_not_found(vault_settings: Settings, platform):
    settings = vault_settings(OWN, auth_method="token", token=platform.vault_root_token())

    with pytest.raises(SecretNotFoundError, match="no secret at secret/mlops/nothing-here"):
        VaultClient(settings).login().read_secret("secret/mlops/nothing-here")


def test_a_missing_role_is_reported(vault_settings: Settings):
    with pytest.raises(VaultAuthError, match="needs VAULT_ROLE"):
        VaultClient(vault_settings(OWN, role="")).login()


# -- spellings of the auth mount and the secret path ------------------------------------


@pytest.mark.parametrize(
    ("spelling", "mount"),
    [
        ("kubernetes", "kubernetes"),
        ("auth/kubernetes", "kubernetes"),
        ("/auth/kubernetes/", "kubernetes"),
        ("/v1/auth/kubernetes/login", "kubernetes"),
        ("v1/auth/kubernetes", "kubernetes"),
        (" jwt ", "jwt"),
        ("auth/k8s/cluster-a", "k8s/cluster-a"),
    ],
)
def test_auth_mount_accepts_every_spelling(spelling: str, mount: str):
    assert auth_mount(spelling) == mount


@pytest.mark.parametrize("spelling", ["", "/", "auth", "/v1/auth/", "/v1/auth/login"])
def test_auth_mount_rejects_an_empty_mount(spelling: str):
    with pytest.raises(VaultError, match="names no auth mount"):
        auth_mount(spelling)


@pytest.mark.parametrize("path_auth", ["auth/jwt", "jwt", "/v1/auth/jwt/login"])
def test_real_login_with_any_spelling_of_the_mount(vault_settings: Settings, path_auth: str):
    """The original bug sent auth/jwt to /v1/auth/auth/jwt/login."""
    secret = VaultClient(vault_settings(OWN, path_auth=path_auth)).login().read_secret()

    assert secret.reveal("mongo_database") == "github"


@pytest.mark.parametrize(
    "value",
    ["secret/mlops/data-fetch", "secret/data/mlops/data-fetch", "/secret/mlops/data-fetch/"],
)
def test_secret_path_accepts_the_cli_and_api_forms(value: str, vault_settings: Settings):
    assert SecretPath.parse(value) == SecretPath("secret", "mlops/data-fetch")
    assert str(SecretPath.parse(value)) == "secret/mlops/data-fetch"
    # and the real read works with either form
    secret = VaultClient(vault_settings(OWN, secret_path=value)).login().read_secret()
    assert secret.reveal("mongo_database") == "github"


@pytest.mark.parametrize("value", ["secret", "", "/"])
def test_secret_path_without_a_path_is_rejected(value: str):
    with pytest.raises(VaultError, match="must be MOUNT/PATH"):
        SecretPath.parse(value)


# -- token lifetime -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_ttl_mount(local_env: LocalEnvironment, vault_admin: hvac.Client) -> str:
    """The stage roles again, on their own jwt mount, with tokens of 3 s (at most 6 s)."""
    bootstrap_vault(
        vault_admin,
        local_env.layout,
        auth="jwt",
        auth_mount="jwt-short",
        jwt_public_key=local_env.identities.public_key_pem(),
        token_ttl="3s",
        token_max_ttl="6s",
    )
    return "jwt-short"


def _json_messages(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["message"] for line in stream.getvalue().splitlines()]


def test_ensure_token_renews_then_logs_in_again_past_max_ttl(
    vault_settings: Settings, short_ttl_mount: str, vault_admin: hvac.Client
):
    stream = io.StringIO()
    configure_logging(OWN, "INFO", stream=stream, json_logs=True)
    client = VaultClient(vault_settings(OWN, path_auth=f"auth/{short_ttl_mount}")).login()
    first_token = client._client.token

    # Between reads, as a long job does between units of work.
    started = time.monotonic()
    reads = 0
    while time.monotonic() - started < 7.5:
        client.ensure_token()
        assert client.read_secret().reveal("mongo_database") == "github"
        reads += 1
        time.sleep(0.25)

    messages = _json_messages(stream)
    assert "renewed Vault token" in messages
    assert "Vault token at its max TTL; logging in again" in messages
    assert messages.index("renewed Vault token") < messages.index(
        "Vault token at its max TTL; logging in again"
    )
    assert reads > 10
    # The first token is really gone: without renewal and a fresh login the reads would fail.
    with pytest.raises(hvac.exceptions.Forbidden):
        vault_admin.auth.token.lookup(first_token)
    assert client._client.token != first_token


def test_read_secret_alone_keeps_a_short_lived_session_going(
    vault_settings: Settings, short_ttl_mount: str
):
    """read_secret calls ensure_token itself: a job that only reads never sees an expired
    token, even well past the token's max TTL."""
    client = VaultClient(vault_settings(OWN, path_auth=short_ttl_mount)).login()
    time.sleep(2.3)  # two thirds of the 3 s life gone
    assert client.read_secret().reveal("mongo_database") == "github"
    time.sleep(2.3)
    assert client.read_secret().reveal("mongo_database") == "github"
    time.sleep(2.3)  # > 6 s since login: past the first token's max TTL
    assert client.read_secret().reveal("mongo_database") == "github"


# -- the other auth methods -----------------------------------------------------------------


@pytest.fixture(scope="module")
def approle_credentials(vault_admin: hvac.Client) -> dict[str, str]:
    """An AppRole (as CI would use) with the data-fetch stage's policy."""
    mount = "approle-ci"
    if f"{mount}/" not in vault_admin.sys.list_auth_methods()["data"]:
        vault_admin.sys.enable_auth_method(method_type="approle", path=mount)
    vault_admin.auth.approle.create_or_update_approle(
        "data-fetch-ci", token_policies=[OWN], token_ttl="5m", mount_point=mount
    )
    role_id = vault_admin.auth.approle.read_role_id("data-fetch-ci", mount_point=mount)
    secret_id = vault_admin.auth.approle.generate_secret_id("data-fetch-ci", mount_point=mount)
    return {
        "path_auth": f"auth/{mount}",
        "role_id": role_id["data"]["role_id"],
        "secret_id": secret_id["data"]["secret_id"],
    }


def test_approle_login_reads_own_secret_only(
    vault_settings: Settings, approle_credentials: dict[str, str]
):
    settings = vault_settings(OWN, auth_method="approle", role="", **approle_credentials)
    client = VaultClient(settings).login()

    assert client.read_secret().reveal("mongo_database") == "github"
    with pytest.raises(VaultPermissionError):
        client.read_secret(f"secret/mlops/{OTHER}")


def test_approle_with_a_wrong_secret_id_is_refused(
    vault_settings: Settings, approle_credentials: dict[str, str]
):
    wrong = {**approle_credentials, "secret_id": "0000-" + PLANTED}
    settings = vault_settings(OWN, auth_method="approle", **wrong)

    with pytest.raises(VaultAuthError) as refused:
        VaultClient(settings).login()

    message = str(refused.value)
    assert "approle login at auth mount 'approle-ci'" in message
    assert "VAULT_SECRET_ID" in message
    assert PLANTED not in message


def test_approle_without_credentials_says_which_are_needed(vault_settings: Settings):
    with pytest.raises(VaultAuthError, match="needs VAULT_ROLE_ID and VAULT_SECRET_ID"):
        VaultClient(vault_settings(OWN, auth_method="approle")).login()


def test_token_login_reads_own_secret_only(vault_settings: Settings, vault_admin: hvac.Client):
    token = vault_admin.auth.token.create(policies=[OWN], ttl="5m")["auth"]["client_token"]
    client = VaultClient(vault_settings(OWN, auth_method="token", token=token)).login()

    assert client.read_secret().reveal("mongo_database") == "github"
    with pytest.raises(VaultPermissionError):
        client.read_secret(f"secret/mlops/{OTHER}")


def test_unknown_token_is_refused_without_echoing_it(vault_settings: Settings):
    settings = vault_settings(OWN, auth_method="token", token="s." + PLANTED)

    with pytest.raises(VaultAuthError) as refused:
        VaultClient(settings).login()

    assert str(refused.value).startswith("Vault refused VAULT_TOKEN")
    assert PLANTED not in str(refused.value)


def test_token_method_without_a_token_says_so(vault_settings: Settings):
    with pytest.raises(VaultAuthError, match="needs VAULT_TOKEN"):
        VaultClient(vault_settings(OWN, auth_method="token")).login()


# -- secret values never leak -----------------------------------------------------------------


@pytest.fixture(scope="module")
def planted_secret(vault_admin: hvac.Client, local_env: LocalEnvironment) -> Iterator[str]:
    """data-fetch's secret with an extra password in it; restored afterwards."""
    vault_admin.secrets.kv.v2.patch(
        path=f"mlops/{OWN}", secret={"db_password": PLANTED}, mount_point="secret"
    )
    yield PLANTED
    vault_admin.secrets.kv.v2.create_or_update_secret(
        path=f"mlops/{OWN}", secret=local_env.stage_secrets()[OWN], mount_point="secret"
    )


def _forbidden_strings(local_env: LocalEnvironment, client: VaultClient | None = None) -> list[str]:
    values = [PLANTED, local_env.stage_secrets()[OWN]["mongo_uri"]]
    values.append(local_env.identities.token_file(OWN).read_text().strip())  # the JWT
    if client is not None and client._client.token:
        values.append(client._client.token)  # the Vault token the login returned
    return values


@pytest.mark.parametrize("json_logs", [True, False], ids=["json", "rich"])
def test_secret_values_never_reach_logs_reprs_or_errors(
    json_logs: bool,
    planted_secret: str,
    vault_settings: Settings,
    local_env: LocalEnvironment,
    short_ttl_mount: str,
):
    stream = io.StringIO()
    configure_logging(OWN, "DEBUG", stream=stream, json_logs=json_logs)
    log = logging.getLogger("test.leaks")
    seen: list[str] = []

    client = VaultClient(vault_settings(OWN, path_auth=short_ttl_mount)).login()
    secret = client.read_secret()
    assert secret.reveal("db_password") == planted_secret  # it is there to leak
    seen += [str(secret), repr(secret), repr(client), str(dict(secret)), repr(secret.where)]
    log.debug("secret %r from %r: %s", secret, client, dict(secret), extra={"secret": secret})
    log.info("settings", extra={"settings": client.settings})
    seen.append(repr(client.settings))

    time.sleep(2.2)
    client.ensure_token()  # renewal is logged
    errors: list[Exception] = []
    for attempt in (
        lambda: secret["db_pasword"],
        lambda: client.read_secret(f"secret/mlops/{OTHER}"),
    ):
        try:
            attempt()
        except VaultError as error:
            errors.append(error)
            log.exception("read failed")
    assert len(errors) == 2
    seen += [str(e) for e in errors] + [repr(e) for e in errors]

    output = stream.getvalue()
    assert "read failed" in output
    assert "renewed Vault token" in output or "logging in again" in output
    for value in _forbidden_strings(local_env, client):
        assert value not in output
        for text in seen:
            assert value not in text


def test_run_stage_failures_never_print_secret_values(
    planted_secret: str,
    stage_env,
    local_env: LocalEnvironment,
    capsys: pytest.CaptureFixture[str],
):
    stage_env(OWN)

    class WrongShape(BaseModel):
        mongo_uri: int  # a string in Vault: invalid
        db_password: int  # "sup3r-s3cret-value": invalid

    def bad_secret_shape() -> dict:
        logging.getLogger("job").debug("secret is %r", read_stage_secret())
        load_stage_secret(WrongShape)
        raise AssertionError("unreachable")

    def reads_other_stage() -> dict:
        secret = read_stage_secret()
        logging.getLogger("job").info("read %s keys", len(secret))
        VaultClient(VaultSettings()).login().read_secret(f"secret/mlops/{OTHER}")
        raise AssertionError("unreachable")

    def missing_key() -> dict:
        read_stage_secret().reveal("api_key")
        raise AssertionError("unreachable")

    assert run_stage(OWN, bad_secret_shape, log_level="DEBUG") == EXIT_CONFIG
    assert run_stage(OWN, reads_other_stage, log_level="DEBUG") == EXIT_VAULT
    assert run_stage(OWN, missing_key, log_level="DEBUG") == EXIT_VAULT
    captured = capsys.readouterr()

    assert captured.out == ""  # no summary for a failed job
    err = captured.err
    assert "configuration error" in err
    assert "Vault secret secret/mlops/data-fetch" in err
    assert "mongo_uri" in err
    assert "db_password" in err
    assert f"permission denied reading secret/mlops/{OTHER}" in err
    assert "key 'api_key' is missing" in err
    for value in _forbidden_strings(local_env):
        assert value not in err


def test_config_errors_from_secrets_are_config_errors(vault_settings: Settings):
    class NeedsMore(BaseModel):
        mongo_uri: str
        warehouse_dsn: str

    with pytest.raises(ConfigError) as invalid:
        load_stage_secret(NeedsMore, vault_settings(OWN))

    assert "Vault secret secret/mlops/data-fetch" in str(invalid.value)
    assert "warehouse_dsn: Field required" in str(invalid.value)
