"""A Vault that speaks only TLS, as the local cluster's does (README: Vault over TLS): the
real OpenBao server with a certificate of our own CA, and a stage's client that trusts
exactly the CA VAULT_CACERT names."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pipeline_common.settings import VaultSettings
from pipeline_common.vault import VaultClient, VaultUnreachableError
from pipeline_ops.local_platform import LocalPlatform, ServerTls

SECRET = "secret/mlops/tls-check"


@dataclass(frozen=True)
class TlsVault:
    url: str
    ca: Path
    root_token: str


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, False)
    return builder.sign(signer, hashes.SHA256())


def _write(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def tls_vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsVault]:
    work = tmp_path_factory.mktemp("vault-tls")
    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _certificate("test-ca", ca_key, None)
    server = _certificate("vault", server_key, (ca.subject, ca_key))
    key_file = work / "vault.key"
    key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tls = ServerTls(_write(work / "vault.crt", server), key_file)
    platform = LocalPlatform(work / "platform", vault_tls=tls)
    record = platform.up(["vault"])["vault"]
    try:
        vault = TlsVault(record.url, _write(work / "ca.crt", ca), platform.vault_root_token())
        admin = hvac.Client(url=vault.url, token=vault.root_token, verify=str(vault.ca))
        admin.secrets.kv.v2.create_or_update_secret(
            path="mlops/tls-check", secret={"answer": "42"}, mount_point="secret"
        )
        yield vault
    finally:
        platform.down()


def _settings(vault: TlsVault, **overrides: str) -> VaultSettings:
    values = {"addr": vault.url, "auth_method": "token", "token": vault.root_token,
              "secret_path": SECRET, "cacert": str(vault.ca), **overrides}  # fmt: skip
    return VaultSettings(**values)  # type: ignore[arg-type]


def test_a_stage_trusting_vaults_ca_reads_its_secret_over_tls(tls_vault: TlsVault):
    assert tls_vault.url.startswith("https://127.0.0.1:")
    secret = VaultClient(_settings(tls_vault)).login().read_secret()
    assert secret.reveal("answer") == "42"


def test_the_vault_port_speaks_only_tls(tls_vault: TlsVault):
    plain = tls_vault.url.replace("https://", "http://")
    assert requests.get(f"{plain}/v1/sys/health", timeout=5).status_code == 400


def test_a_certificate_the_client_does_not_trust_is_refused_naming_vault_cacert(
    tls_vault: TlsVault,
):
    with pytest.raises(VaultUnreachableError) as refused:
        VaultClient(_settings(tls_vault, cacert="")).login()
    message = str(refused.value)
    assert "not trusted by the system's CAs" in message
    assert "set VAULT_CACERT" in message
    assert tls_vault.root_token not in message


def test_a_vault_cacert_that_is_not_there_is_said_before_any_request(
    tls_vault: TlsVault, tmp_path: Path
):
    missing = tmp_path / "vault-ca" / "ca.crt"
    with pytest.raises(VaultUnreachableError) as refused:
        VaultClient(_settings(tls_vault, cacert=str(missing)))
    assert f"VAULT_CACERT={missing} is not a file" in str(refused.value)
    assert "ConfigMap vault-ca" in str(refused.value)
