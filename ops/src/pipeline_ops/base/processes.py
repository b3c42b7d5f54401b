"""One way to keep a server running: a record, a state file, and start / wait / stop by pid.

A ``ProcessRecord`` is a pid with the kernel's start time of that process (its *start
ticks*): together they name one process, so a record whose pid has gone, or now belongs to
another program, is recognised as stale and never signalled. Every process starts in its
own session (its own process group, which ``stop`` signals whole: a server's children go
with it), with its output in a log file (mode 0600: a server may print a dev credential),
and with an explicit environment (``minimal_environment``), never the operator's whole one.

A ``StateFile`` holds the records of one state directory (``{"processes": {...}}`` plus
whatever else its owner keeps beside them), written whole to a temporary file and renamed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline_ops.base.errors import OpsError, ProcessExited, WaitTimeout, tail

log = logging.getLogger(__name__)

# What a child needs from the operator's environment to run at all (programs, locale,
# temporary files, Java, which Python sources: a checkout's, when ops was given them), and
# the standard proxy and CA settings by name, so that a child that reaches the network does
# so the way this machine does. Nothing else: no token, no cloud key, no VAULT_* of the
# operator's own.
PASSED_VARIABLES = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "JAVA_HOME", "PYTHONPATH",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
)  # fmt: skip


def minimal_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every child of ops starts with: ``PASSED_VARIABLES`` that are set,
    plus ``extra`` (what this child is meant to get)."""
    env = {name: os.environ[name] for name in PASSED_VARIABLES if name in os.environ}
    return {**env, **(extra or {})}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_ticks(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (None if gone or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return int(fields[19])


def reap(pid: int) -> None:
    """Collect a child that has exited, so it leaves no zombie (no-op for others)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@dataclass
class ProcessRecord:
    name: str
    pid: int
    start_ticks: int | None
    command: list[str]
    log_file: str
    ports: dict[str, int] = field(default_factory=dict)
    host: str = "127.0.0.1"
    started_at: float = field(default_factory=time.time)
    scheme: str = "http"  # of ``url``: https for a server that only speaks TLS

    @property
    def alive(self) -> bool:
        return self.start_ticks is not None and start_ticks(self.pid) == self.start_ticks

    @property
    def port(self) -> int:
        return self.ports["main"]

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def log_tail(self, chars: int = 2500) -> str:
        try:
            return tail(Path(self.log_file).read_text(errors="replace"), chars) or "(empty log)"
        except OSError:
            return "(no log)"


def start(
    name: str,
    argv: Iterable[str | Path],
    *,
    log_file: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
    ports: Mapping[str, int] | None = None,
    host: str = "127.0.0.1",
    append: bool = False,
    scheme: str = "http",
) -> ProcessRecord:
    """Start ``argv`` in its own session, output to ``log_file``, with exactly ``env``."""
    command = [str(a) for a in argv]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.touch(mode=0o600)
    with log_file.open("ab" if append else "wb") as out:
        try:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(env), cwd=cwd, start_new_session=True,
            )  # fmt: skip
        except FileNotFoundError as error:
            raise OpsError(
                f"{name}: {command[0]} is not installed; `make setup` installs it"
            ) from error
    return ProcessRecord(
        name, process.pid, start_ticks(process.pid), command, str(log_file),
        dict(ports or {}), host, scheme=scheme,
    )  # fmt: skip


def wait_healthy(
    record: ProcessRecord,
    healthy: Callable[[], bool],
    timeout: float,
    *,
    what: str = "healthy",
    every: float = 0.25,
) -> float:
    """Seconds until ``healthy()``; ``ProcessExited`` or ``WaitTimeout`` with the end of the
    process's log if it dies or overruns."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not record.alive:
            reap(record.pid)
            raise ProcessExited(
                f"{record.name} exited during start ({record.log_file}); end of its log:\n"
                f"{record.log_tail()}"
            )
        if healthy():
            return time.monotonic() - started
        time.sleep(every)
    raise WaitTimeout(
        f"{record.name} not {what} after {timeout:.0f}s ({record.log_file}); end of its log:\n"
        f"{record.log_tail()}"
    )


def stop(record: ProcessRecord, timeout: float = 30, *, group: bool = True) -> bool:
    """SIGTERM (to its process group), then SIGKILL after ``timeout``; False if it was
    not running (a stale record is never signalled)."""
    if not record.alive:
        reap(record.pid)
        return False
    send = (lambda sig: os.killpg(record.pid, sig)) if group else (
        lambda sig: os.kill(record.pid, sig)
    )  # fmt: skip
    try:
        send(signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and record.alive:
        reap(record.pid)
        time.sleep(0.1)
    if record.alive:
        log.warning("%s (pid %s) ignored SIGTERM for %ss; killing it", record.name, record.pid,
                    timeout)  # fmt: skip
        with contextlib.suppress(ProcessLookupError):
            send(signal.SIGKILL)
        while record.alive:
            reap(record.pid)
            time.sleep(0.1)
    reap(record.pid)
    log.info("stopped %s (pid %s)", record.name, record.pid)
    return True


class StateFile:
    """The records of one state directory, and what their owner keeps beside them."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        return dict(json.loads(self.path.read_text()))

    def write(self, state: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.path)

    def records(self) -> dict[str, ProcessRecord]:
        raw = self.read().get("processes", {})
        return {name: ProcessRecord(**record) for name, record in raw.items()}

    def save_records(self, records: Mapping[str, ProcessRecord]) -> None:
        self.write({**self.read(), "processes": {n: asdict(r) for n, r in records.items()}})

    def add(self, record: ProcessRecord) -> None:
        self.save_records({**self.records(), record.name: record})

    def remove(self, name: str) -> ProcessRecord | None:
        records = self.records()
        record = records.pop(name, None)
        self.save_records(records)
        return record

    def running(self) -> dict[str, ProcessRecord]:
        """The records whose process is still the one started; stale ones dropped."""
        records = self.records()
        alive = {n: r for n, r in records.items() if r.alive}
        if alive.keys() != records.keys():
            for name in records.keys() - alive.keys():
                log.info("dropping stale record of %s (pid %s is gone)", name, records[name].pid)
            self.save_records(alive)
        return alive

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)
