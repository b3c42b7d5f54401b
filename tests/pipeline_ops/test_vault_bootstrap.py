"""The Vault bootstrap against the real dev server: idempotent, least privilege per stage,
and checks that leave Vault untouched when the arguments are wrong."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import hvac
import hvac.exceptions
import pytest

from pipeline_common.settings import VaultSettings
from pipeline_common.vault import VaultClient, VaultPermissionError
from pipeline_ops import stages
from pipeline_ops.local_env import LOCAL_AUTH_MOUNT, LocalEnvironment
from pipeline_ops.vault_bootstrap import bootstrap_vault, main

STAGES = stages.VAULT_IDENTITIES  # the stages and the delivery jobs with their own secret


def _settings(local_env: LocalEnvironment, stage: str, **overrides) -> VaultSettings:
    values = {k.removeprefix("VAULT_").lower(): v for k, v in local_env.stage_env(stage).items()}
    return VaultSettings(**{**values, **overrides})


def _stage_token(local_env: LocalEnvironment, stage: str, mount: str = LOCAL_AUTH_MOUNT) -> str:
    """Log in as the stage the way Vault's jwt method documents it, outside our client."""
    client = hvac.Client(url=local_env.platform.service("vault").url, token="")
    jwt = local_env.identities.token_file(stage).read_text()
    return client.auth.jwt.jwt_login(role=stage, jwt=jwt, path=mount)["auth"]["client_token"]


def test_layout_names_the_stages_of_the_list(local_env: LocalEnvironment):
    assert local_env.layout.stages == STAGES
    assert local_env.layout.secret_path("ml-training") == "secret/mlops/ml-training"


def test_bootstrap_is_idempotent(local_env: LocalEnvironment, vault_admin: hvac.Client):
    for _ in range(2):
        bootstrap_vault(
            vault_admin,
            local_env.layout,
            auth="jwt",
            auth_mount=LOCAL_AUTH_MOUNT,
            jwt_public_key=local_env.identities.public_key_pem(),
            secrets=local_env.stage_secrets(),
        )

    assert sorted(vault_admin.sys.list_auth_methods()["data"]).count("jwt/") == 1
    for stage in STAGES:
        secret = VaultClient(_settings(local_env, stage)).login().read_secret()
        assert secret.revealed() == local_env.stage_secrets()[stage]


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_reads_only_its_own_secret(local_env: LocalEnvironment, stage: str):
    client = VaultClient(_settings(local_env, stage)).login()

    for path_stage in STAGES:
        path = local_env.layout.secret_path(path_stage)
        if path_stage == stage:
            assert client.read_secret(path).revealed() == local_env.stage_secrets()[stage]
        else:
            denied = re.escape(f"permission denied reading {path}")
            with pytest.raises(VaultPermissionError, match=denied):
                client.read_secret(path)


@pytest.mark.parametrize("stage", ["data-fetch", "model-serving"])
def test_a_stage_can_neither_write_nor_list_secrets(local_env: LocalEnvironment, stage: str):
    client = hvac.Client(
        url=local_env.platform.service("vault").url, token=_stage_token(local_env, stage)
    )

    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.create_or_update_secret(
            path=f"mlops/{stage}", secret={"mongo_uri": "x"}, mount_point="secret"
        )
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.list_secrets(path="mlops", mount_point="secret")
    with pytest.raises(hvac.exceptions.Forbidden):
        client.sys.read_policy(name=stage)
    # what the default policy gives it: its own token's lookup and renewal
    assert sorted(client.auth.token.lookup_self()["data"]["policies"]) == sorted(["default", stage])


def test_roles_carry_the_layout_token_lifetimes(local_env: LocalEnvironment):
    client = hvac.Client(url=local_env.platform.service("vault").url, token="")
    jwt = local_env.identities.token_file("ml-training").read_text()

    auth = client.auth.jwt.jwt_login(role="ml-training", jwt=jwt, path=LOCAL_AUTH_MOUNT)["auth"]

    assert auth["lease_duration"] == 3600  # token_ttl: 1h in ops/vault/stages.yaml
    assert auth["renewable"] is True


def test_a_kv_v1_mount_is_refused(local_env: LocalEnvironment, vault_admin: hvac.Client):
    if "kv-v1/" not in vault_admin.sys.list_mounted_secrets_engines()["data"]:
        vault_admin.sys.enable_secrets_engine("kv", path="kv-v1", options={"version": "1"})
    layout = dataclasses.replace(local_env.layout, kv_mount="kv-v1")

    with pytest.raises(ValueError, match="kv-v1/ is mounted but is not a KV v2 engine"):
        bootstrap_vault(
            vault_admin,
            layout,
            auth="jwt",
            auth_mount="jwt-kv1",
            jwt_public_key=local_env.identities.public_key_pem(),
        )
    assert "jwt-kv1/" not in vault_admin.sys.list_auth_methods()["data"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"auth": "kubernetes", "auth_mount": "k8s-missing-host"}, "--kubernetes-host"),
        ({"auth": "jwt", "auth_mount": "jwt-missing-key"}, "needs the public key"),
        (
            {"auth": "jwt", "auth_mount": "jwt-bad-secrets", "secrets": {"spark": {"a": "b"}}},
            "unknown stage",
        ),
    ],
    ids=["kubernetes-without-host", "jwt-without-key", "unknown-stage-secret"],
)
def test_wrong_arguments_change_nothing(
    local_env: LocalEnvironment, vault_admin: hvac.Client, arguments: dict, message: str
):
    if arguments.get("secrets"):
        arguments["jwt_public_key"] = local_env.identities.public_key_pem()

    with pytest.raises(ValueError, match=message):
        bootstrap_vault(vault_admin, local_env.layout, **arguments)

    assert f"{arguments['auth_mount']}/" not in vault_admin.sys.list_auth_methods()["data"]


def test_operator_cli_configures_a_new_mount(
    local_env: LocalEnvironment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    key_file = tmp_path / "signing.pub.pem"
    key_file.write_text(local_env.identities.public_key_pem())
    monkeypatch.setenv("VAULT_ADDR", local_env.platform.service("vault").url)
    monkeypatch.setenv("VAULT_TOKEN", local_env.platform.vault_root_token())

    argv = ["--auth", "jwt", "--auth-mount", "jwt-cli", "--jwt-public-key-file", str(key_file)]
    assert main(argv) == 0

    secret = VaultClient(_settings(local_env, "spark-preprocess", path_auth="jwt-cli"))
    assert secret.login().read_secret().revealed() == local_env.stage_secrets()["spark-preprocess"]


def test_operator_cli_needs_an_admin_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:1")

    assert main(["--auth", "jwt"]) == 2
    assert "set VAULT_ADDR and VAULT_TOKEN" in capsys.readouterr().err


def test_each_stage_has_its_role_and_a_policy_for_its_own_secret_only(
    local_env: LocalEnvironment, vault_admin: hvac.Client
):
    for stage in stages.STAGES:
        policy = vault_admin.sys.read_policy(stage.vault_role)["data"]["rules"]
        assert re.findall(r'path "([^"]+)"', policy) == [f"secret/data/mlops/{stage.name}"]
        assert 'capabilities = ["read"]' in policy
        role = vault_admin.read(f"auth/{LOCAL_AUTH_MOUNT}/role/{stage.vault_role}")["data"]
        assert role["bound_subject"] == f"system:serviceaccount:mlops:{stage.service_account}"
        assert role["token_policies"] == [stage.vault_role]
