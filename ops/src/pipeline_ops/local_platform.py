"""Start, check and stop the real servers the pipeline needs, as local processes.

Every server binds 127.0.0.1 (or, for the local cluster's pods, the cluster's bridge
address: ``LocalPlatform(host=...)``) on a free port (or one configured as
``PLATFORM_<SERVICE>_PORT``), is waited on until healthy, and is stopped by the process id
this module recorded in ``<state dir>/state.json``. A pid file left by a killed run is
recognised (the pid is gone, or now belongs to another program) and cleaned up.

| service | server | health check |
|---|---|---|
| vault  | OpenBao dev server (Vault API) | GET /v1/sys/health |
| mongo  | FerretDB, SQLite backend (MongoDB wire protocol) | pymongo ping |
| mlflow | mlflow server, SQLite store, one worker | GET /health |
| s3     | SeaweedFS ``weed mini`` (S3 API) | GET on the S3 port |
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from pipeline_ops.paths import LOCAL_DIR, TOOLS_DIR

log = logging.getLogger(__name__)

DEFAULT_SERVICES = ("vault", "mongo", "mlflow")


_WEED_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "volume.port.public",
    "filer.port", "filer.port.grpc", "filer.port.public", "s3.port.grpc", "s3.port.iceberg",
    "s3.port.lance", "s3.metricsPort", "s3.debug.port", "admin.port", "admin.port.grpc",
    "webdav.port", "metricsPort", "debug.port",
)  # fmt: skip


class PlatformError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _venv_bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise PlatformError(f"{name} is not installed; run `make setup`")
    return found


@dataclass
class RunningService:
    name: str
    pid: int
    ports: dict[str, int]
    command: list[str]
    log_file: str
    start_ticks: int | None = None
    started_at: float = field(default_factory=time.time)
    host: str = "127.0.0.1"

    @property
    def port(self) -> int:
        return self.ports["main"]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def proc_start_ticks(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (None if gone or a zombie): with the pid it
    identifies one process, so a recycled pid is never mistaken for our server."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _pid_alive(svc: RunningService) -> bool:
    return svc.start_ticks is not None and proc_start_ticks(svc.pid) == svc.start_ticks


class LocalPlatform:
    """The local servers under one state directory (default ``.local/platform``)."""

    def __init__(
        self,
        state_dir: Path | None = None,
        host: str = "127.0.0.1",
        client_names: Iterable[str] = (),
    ):
        self.state_dir = Path(state_dir or LOCAL_DIR / "platform")
        self.state_file = self.state_dir / "state.json"
        self.host = host  # the address every server binds
        # the host names clients use besides ``host`` (Service names in the cluster)
        self.client_names = tuple(client_names)

    # -- state ---------------------------------------------------------------------
    def _load(self) -> dict[str, RunningService]:
        if not self.state_file.exists():
            return {}
        raw = json.loads(self.state_file.read_text())
        return {name: RunningService(**svc) for name, svc in raw.get("services", {}).items()}

    def _save(self, services: dict[str, RunningService]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"services": {n: asdict(s) for n, s in services.items()}}, indent=2)
        )
        tmp.replace(self.state_file)

    def running(self) -> dict[str, RunningService]:
        """Services recorded as started whose process is still alive; stale entries dropped."""
        services = self._load()
        alive = {n: s for n, s in services.items() if _pid_alive(s)}
        if alive.keys() != services.keys():
            for name in services.keys() - alive.keys():
                log.info("dropping stale record of %s (pid %s is gone)", name, services[name].pid)
            self._save(alive)
        return alive

    def service(self, name: str) -> RunningService:
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
    ) -> dict[str, RunningService]:
        running = self.running()
        for name in services:
            if name not in SERVICES:
                raise PlatformError(f"unknown service {name!r}; choose from {tuple(SERVICES)}")
            if name in running and self._healthy(running[name]):
                continue
            if name in running:  # alive but unhealthy: replace it
                self._stop_one(running.pop(name))
            svc = self._start(name)
            running[name] = svc
            self._save(running)
            self._wait_healthy(svc, timeout)
            log.info("%s ready on %s:%s (pid %s)", name, svc.host, svc.port, svc.pid)
        return running

    def _port(self, name: str) -> int:
        configured = os.environ.get(f"PLATFORM_{name.upper()}_PORT")
        return int(configured) if configured else free_port()

    def _start(self, name: str) -> RunningService:
        data_dir = self.state_dir / name
        data_dir.mkdir(parents=True, exist_ok=True)
        port = self._port(name)
        launch = SERVICES[name].launch(self, data_dir, port)
        ports = {"main": port, **launch.ports}
        log_file = data_dir / f"{name}.log"
        # Server logs may hold dev credentials (the dev Vault prints its root token).
        log_file.touch(mode=0o600)
        with log_file.open("ab") as out:
            process = subprocess.Popen(
                launch.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=launch.env, cwd=data_dir, start_new_session=True,
            )  # fmt: skip
        return RunningService(
            name, process.pid, ports, launch.command, str(log_file),
            proc_start_ticks(process.pid), host=self.host,
        )  # fmt: skip

    def s3_credentials(self) -> dict[str, str]:
        """Keys for the local S3 server, generated once and kept out of git (mode 0600)."""
        key_file = self.state_dir / "s3" / "credentials.json"
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.write_text(
                json.dumps(
                    {
                        "access_key_id": "local" + secrets.token_hex(6),
                        "secret_access_key": secrets.token_urlsafe(30),
                    }
                )
            )
            key_file.chmod(0o600)
        return json.loads(key_file.read_text())

    # -- health ------------------------------------------------------------------------
    def _healthy(self, svc: RunningService) -> bool:
        return SERVICES[svc.name].healthy(svc)

    def _wait_healthy(self, svc: RunningService, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(svc):
                tail = Path(svc.log_file).read_text(errors="replace")[-2000:]
                raise PlatformError(f"{svc.name} exited during start; log tail:\n{tail}")
            if self._healthy(svc):
                return
            time.sleep(0.2)
        raise PlatformError(f"{svc.name} not healthy after {timeout:.0f}s; see {svc.log_file}")

    # -- stop --------------------------------------------------------------------------
    def down(self, services: Iterable[str] | None = None) -> list[str]:
        running = self._load()
        names = [n for n in (services or list(running)) if n in running]
        for name in names:
            self._stop_one(running.pop(name))
            self._save(running)
        return names

    def _stop_one(self, svc: RunningService, timeout: float = 45) -> None:
        if not _pid_alive(svc):
            return
        try:
            os.killpg(svc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(svc):
            time.sleep(0.1)
        if _pid_alive(svc):
            log.warning(
                "%s (pid %s) ignored SIGTERM for %ss; killing it", svc.name, svc.pid, timeout
            )
            os.killpg(svc.pid, signal.SIGKILL)
        reap(svc.pid)
        log.info("stopped %s (pid %s)", svc.name, svc.pid)

    def status(self) -> dict[str, dict[str, object]]:
        return {
            name: {
                "pid": svc.pid,
                "port": svc.port,
                "healthy": self._healthy(svc),
                "log": svc.log_file,
            }
            for name, svc in self.running().items()
        }


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _http_ok(url: str, *, any_status: bool = False) -> bool:
    try:
        response = requests.get(url, timeout=2)
    except requests.RequestException:
        return False
    return any_status or response.status_code == 200


def _mongo_ok(svc: RunningService) -> bool:
    import pymongo

    try:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            f"mongodb://{svc.host}:{svc.port}/", serverSelectionTimeoutMS=1000
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
    env: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # besides the main port


@dataclass(frozen=True)
class Service:
    launch: Callable[[LocalPlatform, Path, int], Launch]
    healthy: Callable[[RunningService], bool]


def _vault(platform: LocalPlatform, data_dir: Path, port: int) -> Launch:
    token_file = platform.vault_root_token_file
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(24))
        token_file.chmod(0o600)
    # The dev server keeps everything in memory: each start is a fresh Vault, which the
    # bootstrap then configures. The root token goes in the environment, not the command
    # line: any user can read another process's arguments, not its environment.
    env = {k: v for k, v in os.environ.items() if k != "VAULT_TOKEN"}
    env["BAO_DEV_ROOT_TOKEN_ID"] = platform.vault_root_token()
    command = [
        _venv_bin("bao"), "server", "-dev", f"-dev-listen-address={platform.host}:{port}",
        # Without this the dev server writes its root token to ~/.vault-token, where every
        # hvac client without an explicit token would pick it up.
        "-dev-no-store-token",
    ]  # fmt: skip
    return Launch(command, env)


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
    return Launch(command, {**os.environ}, {"debug": debug})


def _mlflow(platform: LocalPlatform, data_dir: Path, port: int) -> Launch:
    command = [
        _venv_bin("mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{data_dir}/mlflow.db",
        "--artifacts-destination", str(data_dir / "artifacts"),
        "--host", platform.host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    if platform.host != "127.0.0.1":
        # MLflow answers only the Host names it allows (DNS rebinding): by default loopback
        # and private ranges, which the cluster's bridge address and Service names are not.
        names = (platform.host, *platform.client_names)
        command += ["--allowed-hosts", ",".join(f"{name}:*" for name in names)]
    return Launch(command, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


def _s3(platform: LocalPlatform, data_dir: Path, port: int) -> Launch:
    # weed mini opens many listeners; each gets a free port so that parallel runs on one
    # machine cannot collide.
    extra = {flag: free_port() for flag in _WEED_PORT_FLAGS}
    credentials = platform.s3_credentials()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": credentials["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": credentials["secret_access_key"],
    }
    command = [
        _venv_bin("weed"), "mini", f"-dir={data_dir}", f"-ip={platform.host}",
        f"-ip.bind={platform.host}",
        f"-s3.port={port}", *(f"-{flag}={p}" for flag, p in extra.items()),
        "-admin.ui=false", "-webdav=false",
    ]  # fmt: skip
    return Launch(command, env, extra)


SERVICES: dict[str, Service] = {
    "vault": Service(_vault, lambda s: _http_ok(f"{s.url}/v1/sys/health")),
    "mongo": Service(_mongo, _mongo_ok),
    "mlflow": Service(_mlflow, lambda s: _http_ok(f"{s.url}/health")),
    "s3": Service(_s3, lambda s: _http_ok(f"{s.url}/", any_status=True)),
}
