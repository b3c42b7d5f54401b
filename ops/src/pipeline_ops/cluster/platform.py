"""The platform services of the cluster's environments, outside the cluster as managed
services are in production (a Vault of its own, managed MongoDB, DigitalOcean Spaces, an
MLflow server): OpenBao, FerretDB, MLflow and SeaweedFS run as host processes on the
bridge address (the launchers of `make run`, ``LocalPlatform(host=BRIDGE_IP)``), and pods
reach them by the Service names a production cluster would give them: a Service without a
selector per server, its EndpointSlice pointing at the host process. Vault answers at
``https://vault.vault.svc:8200``, the address the manifests carry (argo-apps/base/vault.env),
and speaks only TLS there, with a certificate of the cluster's CA, which the administrator
puts in each environment's namespace as the ConfigMap ``vault-ca`` (the pods mount it: the
file VAULT_CACERT names). Of SeaweedFS only the S3 port
(which checks the keys) listens on the bridge; its master, volume and filer listen on
loopback and ask for a JWT, so a pod reaches the buckets through S3 with its keys or not at
all.

Vault is configured by the production command, ``python -m pipeline_ops.vault_bootstrap
--auth kubernetes``: each stage's pod logs in with its own ServiceAccount's projected token,
which Vault checks with this cluster's TokenReview API (as the ``vault-auth`` account, bound
to ``system:auth-delegator``), and reads only its own secret.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_ops.base import commands
from pipeline_ops.base.processes import minimal_environment
from pipeline_ops.cluster import addons, git_server
from pipeline_ops.cluster.layout import (
    BRIDGE_IP,
    CLUSTER_DOMAIN,
    ENVIRONMENT_NAMESPACES,
    GITHUB_CONTENTS_PORT,
    Layout,
)
from pipeline_ops.cluster.pki import Pki
from pipeline_ops.local_env import stage_secrets
from pipeline_ops.local_platform import LocalPlatform, ServerTls
from pipeline_ops.stages import PLATFORM_SERVICE_ANNOTATION, VAULT_CA_CONFIG_MAP

log = logging.getLogger(__name__)

FEATURES_URI = "s3://pr-anomaly-features/features"
VAULT_AUTH_ACCOUNT = "vault-auth"
# The JSON Pointer of that annotation in a patch ("/" escaped as "~1", RFC 6901)
PLACEMENT_KEY = PLATFORM_SERVICE_ANNOTATION.replace("/", "~1")


@dataclass(frozen=True)
class ServiceName:
    """How pods reach one platform server: ``name.namespace.svc:port``, a Service in front
    of the host process on ``BRIDGE_IP:host_port``."""

    server: str  # the LocalPlatform service it fronts
    namespace: str
    name: str
    port: int
    host_port: int  # fixed: the local environment's NetworkPolicies name it
    placement: str  # its NetworkPolicy's pr-anomaly-mlops/platform-service (argo-apps/base)
    scheme: str = "http"

    @property
    def host(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{CLUSTER_DOMAIN}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


SERVICE_NAMES = (
    ServiceName("vault", "vault", "vault", 8200, 18200, "vault", scheme="https"),
    ServiceName("mongo", "platform", "mongo", 27017, 18017, "mongodb"),
    ServiceName("mlflow", "platform", "mlflow", 5000, 18500, "mlflow"),
    ServiceName("s3", "platform", "s3", 8333, 18333, "object-storage"),
)
# The stand-in of GitHub's API the pin job writes through (the cluster's git server).
GITHUB_PLACEMENT = ("github", GITHUB_CONTENTS_PORT)


def placement_patches() -> list[dict[str, Any]]:
    """The local environment's placement of the platform services (README: NetworkPolicies):
    each service's egress policy sends its workloads to the host process on the bridge
    address and the port it listens on, as a Vault or a database outside a real cluster is
    reached by address. Kustomize patches for both environments' Applications."""
    places = [(s.placement, s.host_port) for s in SERVICE_NAMES] + [GITHUB_PLACEMENT]
    at_host = [
        _replace(placement, "/spec/egress/0",
                 {"to": [{"ipBlock": {"cidr": f"{BRIDGE_IP}/32"}}],
                  "ports": [{"protocol": "TCP", "port": port}]})
        for placement, port in places
    ]  # fmt: skip
    # The cluster's DNS is where a real cluster's is, but listens on another port in its pod
    # (a policy's ports are the pod's, after the Service's translation).
    dns_ports = [{"protocol": p, "port": addons.COREDNS_PORT} for p in ("UDP", "TCP")]
    return [*at_host, _replace("dns", "/spec/egress/0/ports", dns_ports)]


def _replace(placement: str, path: str, value: Any) -> dict[str, Any]:
    """A patch of the policy of platform service ``placement``, after checking it is that."""
    test = {"op": "test", "path": f"/metadata/annotations/{PLACEMENT_KEY}", "value": placement}
    replace = {"op": "replace", "path": path, "value": value}
    return {
        "target": {"kind": "NetworkPolicy", "name": f"egress-to-{placement}"},
        "patch": json.dumps([test, replace]),
    }


def _by_server(server: str) -> ServiceName:
    return next(s for s in SERVICE_NAMES if s.server == server)


def _names(service: ServiceName) -> list[str]:
    short = f"{service.name}.{service.namespace}"
    return [service.host, f"{short}.svc", short]


class ClusterPlatform:
    """Start (or find running), wire and stop the environments' platform servers."""

    def __init__(self, layout: Layout):
        self.layout = layout
        client_names = [name for service in SERVICE_NAMES for name in _names(service)]
        self.pki = Pki(layout)
        vault_tls = ServerTls(self.pki.cert("vault"), self.pki.key("vault"))
        ports = {service.server: service.host_port for service in SERVICE_NAMES}
        self.servers = LocalPlatform(layout.root / "platform", BRIDGE_IP, client_names,
                                     vault_tls=vault_tls, ports=ports)  # fmt: skip

    def up(self, timeout: float = 120) -> dict[str, str]:
        """Every server running and healthy, its Service in the cluster, Vault configured;
        the host-side URL of each server."""
        self.pki.ensure()  # Vault's certificate (made by cluster-up; nothing if it exists)
        running = self.servers.up([s.server for s in SERVICE_NAMES], timeout=timeout)
        objects: list[dict[str, Any]] = []
        for service in SERVICE_NAMES:
            objects += _service_to_host(service, running[service.server].port)
        self.layout.kubectl().apply(objects)
        self.configure_vault()
        return {name: svc.url for name, svc in running.items()}

    def down(self) -> list[str]:
        return self.servers.down()

    def url(self, server: str) -> str:
        """Where this machine reaches ``server`` (the pods use its Service name)."""
        return self.servers.service(server).url

    def stage_secrets(self) -> dict[str, dict[str, str]]:
        """Each stage's Vault secret, with the addresses pods use."""
        credentials = self.servers.s3_credentials()
        return stage_secrets(
            mongo_uri=f"mongodb://{_by_server('mongo').host}:{_by_server('mongo').port}/",
            mlflow_uri=_by_server("mlflow").url,
            features_uri=FEATURES_URI,
            s3={
                "s3_endpoint_url": _by_server("s3").url,
                "s3_access_key_id": credentials["access_key_id"],
                "s3_secret_access_key": credentials["secret_access_key"],
            },
            git_write_token=git_server.contents_token(self.layout),
        )

    def configure_vault(self) -> None:
        """`vault_bootstrap --auth kubernetes`, exactly as README gives it for production,
        plus what a Vault outside the cluster needs: the CA and a reviewer token."""
        kubectl = self.layout.kubectl()
        kubectl.apply(_vault_auth_objects(), force_conflicts=False)
        kubectl.apply(_vault_ca_objects(self.pki.ca.read_text()), force_conflicts=False)
        reviewer = kubectl(
            "-n", "vault", "create", "token", VAULT_AUTH_ACCOUNT, "--duration=48h"
        ).strip()
        vault = self.servers.service("vault")
        with tempfile.TemporaryDirectory(prefix="vault-bootstrap-") as work:
            secrets_file = Path(work) / "secrets.json"
            reviewer_file = Path(work) / "reviewer.jwt"
            for path, text in ((secrets_file, json.dumps(self.stage_secrets())),
                               (reviewer_file, reviewer)):  # fmt: skip
                path.touch(mode=0o600)
                path.write_text(text)
            command = [
                sys.executable, "-m", "pipeline_ops.vault_bootstrap", "--auth", "kubernetes",
                "--kubernetes-host", self.layout.apiserver_url,
                "--kubernetes-ca-cert-file", str(self.pki.ca),
                "--token-reviewer-jwt-file", str(reviewer_file),
                "--secrets-file", str(secrets_file),
                *(arg for ns in ENVIRONMENT_NAMESPACES for arg in ("--namespace", ns)),
            ]  # fmt: skip
            # the root token in the child's environment only; the bootstrap never prints a
            # secret value, and an error's stderr is redacted of both tokens all the same
            token = self.servers.vault_root_token()
            env = minimal_environment({"VAULT_ADDR": vault.url, "VAULT_TOKEN": token,
                                       "VAULT_CACERT": str(self.pki.ca)})  # fmt: skip
            commands.run(command, what="vault_bootstrap --auth kubernetes", env=env,
                         timeout=120, secrets=(token, reviewer))  # fmt: skip
        log.info("Vault: kubernetes auth against %s, roles bound to namespaces %s",
                 self.layout.apiserver_url, ", ".join(ENVIRONMENT_NAMESPACES))  # fmt: skip


def _service_to_host(service: ServiceName, host_port: int) -> list[dict[str, Any]]:
    """A Service without a selector and the EndpointSlice that sends it to the host."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": service.namespace}}
    port = {"name": "main", "protocol": "TCP"}
    return [
        namespace,
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service.name, "namespace": service.namespace,
                         "labels": {"pr-anomaly.local/host-server": service.server}},
            "spec": {"ports": [{**port, "port": service.port}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service.name}-host", "namespace": service.namespace,
                         "labels": {"kubernetes.io/service-name": service.name,
                                    "endpointslice.kubernetes.io/managed-by":
                                        "pr-anomaly-cluster-platform"}},
            "addressType": "IPv4",
            "ports": [{**port, "port": host_port}],
            "endpoints": [{"addresses": [BRIDGE_IP], "conditions": {"ready": True}}],
        },
    ]  # fmt: skip


def _vault_ca_objects(ca: str) -> list[dict[str, Any]]:
    """The CA that signed Vault's certificate, in each environment's namespace, as the
    administrator of a real cluster makes it (README: Vault over TLS)."""
    return [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": VAULT_CA_CONFIG_MAP, "namespace": namespace},
         "data": {"ca.crt": ca}}
        for namespace in ENVIRONMENT_NAMESPACES
    ]  # fmt: skip


def _vault_auth_objects() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "vault"}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": VAULT_AUTH_ACCOUNT, "namespace": "vault"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "pr-anomaly-vault-token-review"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "system:auth-delegator"},
         "subjects": [{"kind": "ServiceAccount", "name": VAULT_AUTH_ACCOUNT,
                       "namespace": "vault"}]},
    ]  # fmt: skip
