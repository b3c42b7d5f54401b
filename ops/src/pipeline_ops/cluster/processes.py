"""The cluster's host processes: started in their own session with a log, recorded with their
pid and kernel start ticks in ``state.json``, waited on until healthy, stopped by pid.

A record whose pid is gone, or now belongs to another program (other start ticks), is stale.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline_ops.cluster import ClusterError
from pipeline_ops.cluster.layout import Layout
from pipeline_ops.local_platform import proc_start_ticks, reap

log = logging.getLogger(__name__)


@dataclass
class Process:
    name: str
    pid: int
    command: list[str]
    log_file: str
    start_ticks: int | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def alive(self) -> bool:
        return self.start_ticks is not None and proc_start_ticks(self.pid) == self.start_ticks

    def log_tail(self, chars: int = 2500) -> str:
        try:
            return Path(self.log_file).read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


class Processes:
    """What ``state.json`` records: the processes, and whether ``up`` finished."""

    def __init__(self, layout: Layout):
        self.layout = layout

    # -- state -----------------------------------------------------------------------
    def load(self) -> tuple[dict[str, Process], str | None]:
        if not self.layout.state_file.exists():
            return {}, None
        raw = json.loads(self.layout.state_file.read_text())
        procs = {name: Process(**proc) for name, proc in raw.get("processes", {}).items()}
        return procs, raw.get("phase")

    def save(self, procs: dict[str, Process], phase: str) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        tmp = self.layout.state_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {"phase": phase, "processes": {n: asdict(p) for n, p in procs.items()}}, indent=2
            )
        )
        tmp.replace(self.layout.state_file)

    def set_phase(self, phase: str) -> None:
        procs, _ = self.load()
        self.save(procs, phase)

    def forget(self) -> None:
        self.layout.state_file.unlink(missing_ok=True)

    # -- start -------------------------------------------------------------------------
    def start(self, name: str, command: list[str], *, env: dict[str, str] | None = None) -> Process:
        log_file = self.layout.logs / f"{name}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, cwd=self.layout.root, start_new_session=True,
            )  # fmt: skip
        proc = Process(name, process.pid, command, str(log_file), proc_start_ticks(process.pid))
        procs, phase = self.load()
        procs[name] = proc
        self.save(procs, phase or "starting")
        return proc

    def wait(
        self, proc: Process, healthy: Callable[[], bool], timeout: float, what: str = "healthy"
    ) -> float:
        """Seconds until ``healthy()``; a clear error with the log's end if it dies or times out."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not proc.alive:
                reap(proc.pid)
                raise ClusterError(
                    f"{proc.name} exited during start ({proc.log_file}); end of its log:\n"
                    f"{proc.log_tail()}"
                )
            if healthy():
                return time.monotonic() - started
            time.sleep(0.25)
        raise ClusterError(
            f"{proc.name} not {what} after {timeout:.0f}s ({proc.log_file}); end of its log:\n"
            f"{proc.log_tail()}"
        )

    # -- stop --------------------------------------------------------------------------
    def stop(self, name: str, timeout: float = 30) -> bool:
        procs, phase = self.load()
        proc = procs.pop(name, None)
        stopped = proc is not None and _stop(proc, timeout)
        self.save(procs, phase or "stopping")
        return stopped


def _stop(proc: Process, timeout: float) -> bool:
    if not proc.alive:
        return False
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.alive:
        time.sleep(0.1)
    if proc.alive:
        log.warning("%s (pid %s) ignored SIGTERM for %ss; killing it", proc.name, proc.pid, timeout)
        os.killpg(proc.pid, signal.SIGKILL)
        while proc.alive:
            time.sleep(0.1)
    reap(proc.pid)
    log.info("stopped %s (pid %s)", proc.name, proc.pid)
    return True
