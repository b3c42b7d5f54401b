"""The cluster's certificates, made once with openssl under ``.local/cluster/pki``.

One CA signs every certificate (EC P-256). Client certificates carry the identity RBAC and
the Node authorizer expect (CN = user, O = groups). The service-account key pair signs and
verifies pod tokens.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from pipeline_ops.base import commands
from pipeline_ops.cluster.layout import (
    ADMIN,
    BRIDGE_IP,
    CLUSTER_DOMAIN,
    KUBERNETES_SERVICE_IP,
    NODE_NAME,
    USER,
    USERS_GROUP,
    Layout,
)

DAYS = 3650


@dataclass(frozen=True)
class Identity:
    name: str  # file name
    common_name: str
    groups: tuple[str, ...] = ()
    server_names: tuple[str, ...] = ()  # "IP:..." / "DNS:..."; a server certificate if any

    @property
    def subject(self) -> str:
        return "".join(f"/O={g}" for g in self.groups) + f"/CN={self.common_name}"


APISERVER_NAMES = (
    f"IP:{BRIDGE_IP}", f"IP:{KUBERNETES_SERVICE_IP}", "IP:127.0.0.1", "DNS:kubernetes",
    "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
    f"DNS:kubernetes.default.svc.{CLUSTER_DOMAIN}", "DNS:localhost",
)  # fmt: skip
IDENTITIES = (
    Identity("apiserver", "kube-apiserver", server_names=APISERVER_NAMES),
    Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)),
    Identity("admin", ADMIN, ("system:masters",)),
    Identity("user", USER, (USERS_GROUP,)),  # argo-apps/access grants it a user's actions
    Identity("kube-controller-manager", "system:kube-controller-manager"),
    Identity("kube-scheduler", "system:kube-scheduler"),
    Identity("kube-proxy", "system:kube-proxy"),
    Identity("kubelet-client", f"system:node:{NODE_NAME}", ("system:nodes",)),
    Identity("kubelet", NODE_NAME, server_names=(f"IP:{BRIDGE_IP}", "IP:127.0.0.1")),
    # the environments' Vault (a host process, cluster/platform.py): pods check its
    # certificate against this CA, which every namespace has (ConfigMap vault-ca)
    Identity(
        "vault",
        "vault.vault.svc",
        server_names=(
            f"IP:{BRIDGE_IP}",
            "DNS:vault.vault.svc",
            f"DNS:vault.vault.svc.{CLUSTER_DOMAIN}",
        ),
    ),
)


def _openssl(*args: str | Path) -> None:
    commands.run(["openssl", *args], what="the cluster's certificates (openssl)")


def _key(path: Path) -> None:
    if not path.exists():
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", path)
        path.chmod(0o600)


class Pki:
    def __init__(self, layout: Layout):
        self.dir = layout.pki
        self.layout = layout

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.cert("ca")

    def ensure(self) -> None:
        """Make whatever is missing (a warm start makes nothing)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        _key(self.key("ca"))
        if not self.ca.exists():
            _openssl(
                "req", "-x509", "-new", "-key", self.key("ca"),
                "-subj", "/CN=pr-anomaly-cluster-ca",
                "-days", str(DAYS), "-out", self.ca,
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            )  # fmt: skip
        for identity in IDENTITIES:
            self._issue(identity)
        _key(self.key("service-account"))
        public = self.dir / "service-account.pub"
        if not public.exists():
            _openssl("ec", "-in", self.key("service-account"), "-pubout", "-out", public)
        for identity in IDENTITIES:
            if not identity.server_names and identity.name != "apiserver-kubelet-client":
                self._kubeconfig(identity)

    def _issue(self, identity: Identity) -> None:
        cert = self.cert(identity.name)
        if cert.exists():
            return
        key = self.key(identity.name)
        _key(key)
        csr = self.dir / f"{identity.name}.csr"
        extensions = self.dir / f"{identity.name}.ext"
        lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]
        if identity.server_names:
            lines += [
                "extendedKeyUsage=serverAuth",
                "subjectAltName=" + ",".join(identity.server_names),
            ]
        else:
            lines += ["extendedKeyUsage=clientAuth"]
        extensions.write_text("\n".join(lines) + "\n")
        _openssl("req", "-new", "-key", key, "-subj", identity.subject, "-out", csr)
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.key("ca"),
            "-set_serial", str(secrets.randbits(63)),
            "-days", str(DAYS), "-extfile", extensions, "-out", cert,
        )  # fmt: skip
        csr.unlink()
        extensions.unlink()

    def _kubeconfig(self, identity: Identity) -> None:
        path = self.layout.kubeconfig_of(identity.name)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "pr-anomaly",
                    "cluster": {
                        "server": self.layout.apiserver_url,
                        "certificate-authority": str(self.ca),
                    },
                }
            ],
            "users": [
                {
                    "name": identity.name,
                    "user": {
                        "client-certificate": str(self.cert(identity.name)),
                        "client-key": str(self.key(identity.name)),
                    },
                }
            ],
            "contexts": [
                {"name": "pr-anomaly", "context": {"cluster": "pr-anomaly", "user": identity.name}}
            ],
            "current-context": "pr-anomaly",
        }
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        path.chmod(0o600)
