"""Start, check and stop the real servers the pipeline needs, as local processes.

Every server binds 127.0.0.1 (or, for the local cluster's pods, the cluster's bridge
address: ``LocalPlatform(host=...)``) on a free port (or one configured as
``PLATFORM_<SERVICE>_PORT``), starts with only the environment it needs (never the
operator's: no token, no cloud key of theirs), is waited on until healthy, and is stopped
by the process id this module recorded (``base.processes``): the state file
``<state dir>/state.json`` (``platform_state(state_dir)``) holds one record per process.
Others add their own records to it (``make run``'s model-serving instances); ``down``
stops every record, newest first, and ``status`` lists every one. A record left by a
killed run is recognised (the pid is gone, or now belongs to another program) and dropped.

One operator at a time per state directory: ``up`` and ``down`` hold its lock
(``LocalPlatform.held``); a second one waits for the first, then is refused by name.

| service | server | health check |
|---|---|---|
| vault  | OpenBao dev server (Vault API; TLS only when given a certificate) | GET /v1/sys/health |
| mongo  | FerretDB, SQLite backend (MongoDB wire protocol) | pymongo ping |
| mlflow | mlflow server, SQLite store, one worker | GET /health |
| s3     | SeaweedFS ``weed server`` (S3 API) | GET on the S3 port |
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import requests

import pipeline_ops
from pipeline_ops import mlflow_server
from pipeline_ops.base import locks, processes
from pipeline_ops.base.errors import OpsError
from pipeline_ops.base.processes import ProcessRecord, StateFile, free_port, minimal_environment
from pipeline_ops.paths import LOCAL_DIR, TOOLS_DIR

log = logging.getLogger(__name__)

DEFAULT_SERVICES = ("vault", "mongo", "mlflow")
STOP_TIMEOUT = 45  # seconds of SIGTERM before SIGKILL
# A second operator waits this long for the first one's `make up` / `make down` / `make run`
# to end (the first `make up` of a machine takes about a minute), then is refused.
LOCK_WAIT = 300

# SeaweedFS's own listeners besides the S3 port, each on a free loopback port so that
# parallel runs on one machine cannot collide (the Iceberg and Lance catalogs are off).
_WEED_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "volume.port.public",
    "filer.port", "filer.port.grpc", "filer.port.public", "s3.port.grpc",
)  # fmt: skip

# The state directories this process holds the lock of (``LocalPlatform.held`` nests).
_held_here: Counter[Path] = Counter()


class PlatformError(OpsError):
    pass


def platform_state(state_dir: Path) -> StateFile:
    """The records of every process started under ``state_dir``: the platform's servers and
    whatever else is added to it (``StateFile.add``), all stopped by ``down``."""
    return StateFile(state_dir / "state.json")


def _venv_bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise PlatformError(f"{name} is not installed; run `make setup`")
    return found


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate and key (PEM files), for a server its clients reach over TLS
    only."""

    cert: Path
    key: Path


class LocalPlatform:
    """The local servers under one state directory (default ``.local/platform``)."""

    def __init__(
        self,
        state_dir: Path | None = None,
        host: str = "127.0.0.1",
        client_names: Iterable[str] = (),
        vault_tls: ServerTls | None = None,
        ports: Mapping[str, int] | None = None,
    ):
        self.state_dir = Path(state_dir or LOCAL_DIR / "platform")
        self.state = platform_state(self.state_dir)
        self.host = host  # the address clients reach the servers on
        # the host names clients use besides ``host`` (Service names in the cluster)
        self.client_names = tuple(client_names)
        # Vault's clients reach it over TLS with this certificate (the local cluster's
        # Vault); without one, plain HTTP on loopback (`make run`, the tests)
        self.vault_tls = vault_tls
        # each service's port where it must be fixed (the local cluster's NetworkPolicies
        # name them); the others take a free one
        self.ports = dict(ports or {})

    # -- one operator at a time -------------------------------------------------------
    @contextlib.contextmanager
    def held(self, what: str, wait: float | None = None) -> Iterator[None]:
        """The state directory's lock (``base.locks.held``) for the block; another operator
        holding it is waited for ``wait`` seconds (default ``LOCK_WAIT``), then refused by
        name. Held already by this process (``up`` inside a ``make run`` that holds it), it
        is not taken again."""
        wait = LOCK_WAIT if wait is None else wait
        key = self.state_dir.resolve()
        with contextlib.ExitStack() as stack:
            if not _held_here[key]:
                try:
                    stack.enter_context(locks.held(self.state_dir, what))
                except locks.StateLocked:
                    log.info("%s: another operator holds %s; waiting up to %.0fs for it", what,
                             self.state_dir, wait)  # fmt: skip
                    stack.enter_context(locks.held(self.state_dir, what, wait))
            _held_here[key] += 1
            try:
                yield
            finally:
                _held_here[key] -= 1

    # -- state ---------------------------------------------------------------------
    def running(self) -> dict[str, ProcessRecord]:
        """Every recorded process still alive. Only reads the state file: stale records are
        dropped by ``up`` and ``down``, under the lock, so a reader never overwrites a record
        that an ``up`` running meanwhile has just added."""
        return {name: r for name, r in self.state.records().items() if r.alive}

    def service(self, name: str) -> ProcessRecord:
        running = self.running()
        if name not in running:
            raise PlatformError(f"{name} is not running; start it with `make up`")
        return running[name]

    @property
    def vault_root_token_file(self) -> Path:
        return self.state_dir / "vault" / "root-token"

    def vault_root_token(self) -> str:
        return self.vault_root_token_file.read_text().strip()

    # -- start -----------------------------------------------------------------------
    def up(
        self, services: Iterable[str] = DEFAULT_SERVICES, timeout: float = 120
    ) -> dict[str, ProcessRecord]:
        services = list(services)
        for name in services:
            if name not in SERVICES:
                raise PlatformError(f"unknown service {name!r}; choose from {tuple(SERVICES)}")
        with self.held("make up"):
            running = self.state.running()  # stale records dropped
            for name in services:
                if name in running and self._healthy(running[name]):
                    continue
                if name in running:  # alive but unhealthy: replace it
                    processes.stop(running.pop(name), STOP_TIMEOUT)
                    self.state.remove(name)
                record = self._start(name)
                running[name] = record
                self.state.add(record)
                processes.wait_healthy(record, partial(self._healthy, record), timeout)
                log.info("%s ready on %s:%s (pid %s)", name, record.host, record.port, record.pid)
            return running

    def _port(self, name: str) -> int:
        configured = os.environ.get(f"PLATFORM_{name.upper()}_PORT")
        if configured:
            return int(configured)
        return self.ports.get(name) or free_port()

    def _start(self, name: str) -> ProcessRecord:
        data_dir = self.state_dir / name
        data_dir.mkdir(parents=True, exist_ok=True)
        port = self._port(name)
        launch = SERVICES[name].launch(self, data_dir, port)
        # Server logs may hold dev credentials (the dev Vault prints its root token): the
        # log is created 0600.
        return processes.start(
            name, launch.command, log_file=data_dir / f"{name}.log", env=launch.env,
            cwd=data_dir, ports={"main": port, **launch.ports}, host=self.host, append=True,
            scheme=launch.scheme,
        )  # fmt: skip

    def s3_credentials(self) -> dict[str, str]:
        """Keys for the local S3 server, generated once and kept out of git (mode 0600)."""
        key_file = self.state_dir / "s3" / "credentials.json"
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.touch(mode=0o600)
            key_file.write_text(
                json.dumps(
                    {
                        "access_key_id": "local" + secrets.token_hex(6),
                        "secret_access_key": secrets.token_urlsafe(30),
                    }
                )
            )
        return dict(json.loads(key_file.read_text()))

    # -- health ------------------------------------------------------------------------
    def _healthy(self, record: ProcessRecord) -> bool:
        if record.name in SERVICES:
            return SERVICES[record.name].healthy(record)
        # a process someone else added (a model-serving instance): alive and listening
        return record.alive and ("main" not in record.ports or _listening(record))

    # -- stop --------------------------------------------------------------------------
    def down(self, services: Iterable[str] | None = None) -> list[str]:
        """Stop every recorded process (or only ``services``), the newest first; the names
        of those that were running."""
        with self.held("make down"):
            records = self.state.records()
            wanted = records.keys() if services is None else set(services)
            newest_first = sorted(
                (r for n, r in records.items() if n in wanted),
                key=lambda r: r.started_at, reverse=True,
            )  # fmt: skip
            stopped = []
            for record in newest_first:
                if processes.stop(record, STOP_TIMEOUT):
                    stopped.append(record.name)
                self.state.remove(record.name)
            return stopped

    def status(self) -> dict[str, dict[str, object]]:
        """Every recorded process still running, with its health."""
        return {
            name: {
                "pid": record.pid,
                "port": record.ports.get("main"),
                "healthy": self._healthy(record),
                "log": record.log_file,
            }
            for name, record in self.running().items()
        }


def _http_ok(url: str, *, any_status: bool = False) -> bool:
    try:
        response = requests.get(url, timeout=2)
    except requests.RequestException:
        return False
    return any_status or response.status_code == 200


def _listening(record: ProcessRecord) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((record.host, record.port)) == 0


def _mongo_ok(record: ProcessRecord) -> bool:
    import pymongo

    try:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            f"mongodb://{record.host}:{record.port}/", serverSelectionTimeoutMS=1000
        )
        with client:
            client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False


# -- the services: how each starts and how its health is checked ---------------------------
@dataclass
class Launch:
    command: list[str]
    env: dict[str, str]  # all of it: minimal_environment plus what this server needs
    ports: dict[str, int] = field(default_factory=dict)  # besides the main port
    scheme: str = "http"  # how clients speak to the main port


@dataclass(frozen=True)
class Service:
    launch: Callable[[LocalPlatform, Path, int], Launch]
    healthy: Callable[[ProcessRecord], bool]


def _vault(platform: LocalPlatform, data_dir: Path, port: int) -> Launch:
    token_file = platform.vault_root_token_file
    if not token_file.exists():
        token_file.touch(mode=0o600)
        token_file.write_text(secrets.token_urlsafe(24))
    # The dev server keeps everything in memory: each start is a fresh Vault, which the
    # bootstrap then configures. The root token goes in the environment, not the command
    # line: any user can read another process's arguments, not its environment.
    env = minimal_environment({"BAO_DEV_ROOT_TOKEN_ID": platform.vault_root_token()})
    command = [
        # Without -dev-no-store-token the dev server writes its root token to ~/.vault-token,
        # where every hvac client without an explicit token would pick it up.
        _venv_bin("bao"), "server", "-dev", "-dev-no-store-token",
    ]  # fmt: skip
    tls = platform.vault_tls
    if tls is None:
        return Launch([*command, f"-dev-listen-address={platform.host}:{port}"], env)
    # The dev server always opens a plain-HTTP listener of its own: it stays on loopback,
    # for the health check only. Clients get a second listener that speaks only TLS, with
    # the given certificate, on the service's address and port.
    dev, cluster = free_port(), free_port()
    listener = {
        "address": f"{platform.host}:{port}", "cluster_address": f"127.0.0.1:{cluster}",
        "tls_cert_file": str(tls.cert), "tls_key_file": str(tls.key),
        "tls_min_version": "tls12",
    }  # fmt: skip
    config = data_dir / "tls-listener.json"
    config.write_text(json.dumps({"listener": [{"tcp": listener}]}, indent=2))
    command += [f"-dev-listen-address=127.0.0.1:{dev}", f"-config={config}"]
    return Launch(command, env, {"health": dev, "cluster": cluster}, scheme="https")


def _mongo(platform: LocalPlatform, data_dir: Path, port: int) -> Launch:
    ferretdb = TOOLS_DIR / "bin" / "ferretdb"
    if not ferretdb.exists():
        raise PlatformError(f"{ferretdb} is missing; run `make setup`")
    debug = free_port()
    command = [
        str(ferretdb), "--handler=sqlite", f"--sqlite-url=file:{data_dir}/",
        f"--listen-addr={platform.host}:{port}", f"--debug-addr=127.0.0.1:{debug}",
        f"--state-dir={data_dir}", "--telemetry=disable", "--log-level=warn",
    ]  # fmt: skip
    return Launch(command, minimal_environment(), {"debug": debug})


def _mlflow(platform: LocalPlatform, data_dir: Path, port: int) -> Launch:
    artifacts = data_dir / "artifacts"
    command = [
        _venv_bin("mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{data_dir}/mlflow.db",
        "--artifacts-destination", str(artifacts),
        "--host", platform.host, "--port", str(port), "--workers", "1",
        # MLflow's app, answering a full artifact store by name at once (mlflow_server)
        "--app-name", mlflow_server.APP_NAME,
    ]  # fmt: skip
    if platform.host != "127.0.0.1":
        # MLflow answers only the Host names it allows (DNS rebinding): by default loopback
        # and private ranges, which the cluster's bridge address and Service names are not.
        names = (platform.host, *platform.client_names)
        command += ["--allowed-hosts", ",".join(f"{name}:*" for name in names)]
    # the entry point naming that app, and this very pipeline_ops for the server to import
    python_path = [_mlflow_app_entry_point(data_dir), Path(pipeline_ops.__file__).parents[1]]
    env = minimal_environment({
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        mlflow_server.ARTIFACTS_VARIABLE: str(artifacts),
        "PYTHONPATH": os.pathsep.join(str(path) for path in python_path),
    })  # fmt: skip
    return Launch(command, env)


def _mlflow_app_entry_point(data_dir: Path) -> Path:
    """A directory whose package metadata declares the ``mlflow.app`` entry point
    ``pr-anomaly`` (``mlflow server --app-name`` finds apps only by entry point)."""
    root = data_dir / "app"
    metadata = root / "pr_anomaly_mlflow_app-0.dist-info"
    metadata.mkdir(parents=True, exist_ok=True)
    (metadata / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: pr-anomaly-mlflow-app\nVersion: 0\n"
    )
    (metadata / "entry_points.txt").write_text(
        f"[mlflow.app]\n{mlflow_server.APP_NAME} = {mlflow_server.__name__}:app\n"
    )
    return root


def _s3(platform: LocalPlatform, data_dir: Path, port: int) -> Launch:
    """``weed server`` with master, volume, filer and S3 in one process. Only the S3
    gateway (its port checks the keys; its gRPC port takes no client) listens on
    ``platform.host``; the master, volume and filer listen on loopback alone (``weed mini``
    binds all of them to one address), and their HTTP APIs ask for a JWT signed with keys
    of this start (security.toml in the data directory, SeaweedFS's working directory), so
    that no one reads or writes a bucket through the filer without the S3 keys."""
    extra = {flag: free_port() for flag in _WEED_PORT_FLAGS}
    _write_weed_security(data_dir, platform.host)
    credentials = platform.s3_credentials()
    env = minimal_environment({
        "AWS_ACCESS_KEY_ID": credentials["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": credentials["secret_access_key"],
    })  # fmt: skip
    command = [
        _venv_bin("weed"), "server", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-filer", "-s3", f"-s3.ip.bind={platform.host}", f"-s3.port={port}",
        *(f"-{flag}={p}" for flag, p in extra.items()),
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        # what `weed mini` sets for a small dev store: small volumes, as many as fit, a
        # quick stop; and no report to SeaweedFS's telemetry server
        "-master.volumeSizeLimitMB=128", "-volume.max=0", "-volume.preStopSeconds=1",
        "-master.telemetry=false",
    ]  # fmt: skip
    return Launch(command, env, extra)


def _write_weed_security(data_dir: Path, host: str) -> None:
    """security.toml: JWT keys of this start for the HTTP APIs, and TLS with client
    certificates for the S3 gateway's gRPC port, the one other port on ``host`` (its
    ``Configure`` call would replace the S3 keys): signed by a CA whose key is thrown away,
    so no client ever holds a certificate it accepts; nothing of ours calls it."""
    tls = data_dir / "grpc-tls"
    tls.mkdir(exist_ok=True)
    for name, data in _s3_grpc_certificates(host).items():
        path = tls / name
        path.unlink(missing_ok=True)
        path.touch(mode=0o600)
        path.write_bytes(data)
    sections: dict[str, dict[str, str]] = {
        section: {"key": secrets.token_urlsafe(32)}
        for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing",
                        "jwt.filer_signing.read")
    }  # fmt: skip
    sections["grpc"] = {"ca": str(tls / "ca.crt")}
    sections["grpc.s3"] = {"cert": str(tls / "s3.crt"), "key": str(tls / "s3.key")}
    security = data_dir / "security.toml"
    security.unlink(missing_ok=True)
    security.touch(mode=0o600)
    security.write_text(
        "".join(
            f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
            for section, values in sections.items()
        )
    )


def _s3_grpc_certificates(host: str) -> dict[str, bytes]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = (
        x509.CertificateBuilder().subject_name(name("platform s3 grpc ca"))
        .issuer_name(name("platform s3 grpc ca")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    addresses = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address(host)}
    server = (
        x509.CertificateBuilder().subject_name(name("s3")).issuer_name(ca.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(a) for a in addresses]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    return {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "s3.crt": server.public_bytes(serialization.Encoding.PEM),
        "s3.key": server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }


def _vault_health_url(record: ProcessRecord) -> str:
    """The dev server's own listener: the TLS one's clients check its certificate, which the
    health check has no business knowing."""
    health = record.ports.get("health")
    return f"http://127.0.0.1:{health}" if health else record.url


SERVICES: dict[str, Service] = {
    "vault": Service(_vault, lambda r: _http_ok(f"{_vault_health_url(r)}/v1/sys/health")),
    "mongo": Service(_mongo, _mongo_ok),
    "mlflow": Service(_mlflow, lambda r: _http_ok(f"{r.url}/health")),
    "s3": Service(_s3, lambda r: _http_ok(f"{r.url}/", any_status=True)),
}
