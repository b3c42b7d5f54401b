"""Debian's Docker engine, started by the project: its own socket, data root, exec root and
pid file, its networks in 198.18.0.0/16, stopped by its process id, leftovers cleaned.

One engine per machine, under the cache directory (``$PR_ANOMALY_CACHE/engine``): its data
root holds the base images and the layer cache, so a second clone, or CI on the same machine,
builds only what changed. ``up`` is idempotent; an engine that was killed (pid gone, or now
another program) is detected, and what it left behind (shim processes, mounts, the bridge,
iptables chains) is removed before a new one starts. ``down`` also restores the host: the
sysctls and the FORWARD policy recorded before the start, and no Docker bridge or chain.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline_ops import host_sysctls
from pipeline_ops.base.processes import start_ticks as proc_start_ticks
from pipeline_ops.paths import CACHE_DIR

log = logging.getLogger(__name__)

# Addresses: the default bridge and every user-defined network live in 198.18.0.0/16, a
# range reserved for benchmarking that no real host uses (the cluster keeps 198.19.0.0/16).
BRIDGE_ADDRESS = "198.18.0.1/24"
ADDRESS_POOL = "base=198.18.16.0/20,size=24"
ENGINE_NETWORK_PREFIX = "198.18."
BRIDGE = "docker0"
# Every container's cgroup lives below this one: a killed engine's containers are found and
# stopped through it (their shims may be gone, but their processes are not).
CGROUP_PARENT = "pr-anomaly-engine"
# What Docker changes on the host and `down` puts back.
RECORDED_SYSCTLS = ("net.ipv4.ip_forward",)
PACKAGES = {  # command -> Debian package
    "dockerd": "docker.io",
    "containerd": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "debootstrap": "debootstrap",
}


class EngineError(RuntimeError):
    pass


@dataclass
class EngineState:
    pid: int
    start_ticks: int | None
    log_file: str
    sysctls: dict[str, str | None] = field(default_factory=dict)  # the machine's own values
    forward_policy: str = "ACCEPT"
    bridge_existed: bool = False


class ContainerEngine:
    def __init__(self, home: Path | None = None):
        self.home = Path(home or CACHE_DIR / "engine")
        self.socket = self.home / "docker.sock"
        self.state_file = self.home / "state.json"
        self.data_root = self.home / "data"
        self.exec_root = self.home / "run"
        self.log_file = self.home / "dockerd.log"

    # -- the client --------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """What a docker client needs to talk to this engine (the legacy builder: Debian
        ships no buildx)."""
        return {"DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}

    def docker(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        client = shutil.which("docker")
        if not client:
            raise EngineError("the docker client is missing; run `make engine-up`")
        return subprocess.run(
            [client, *args],
            env={**os.environ, **self.env()},
            check=check,
            text=True,
            capture_output=kwargs.pop("capture_output", True),
            **kwargs,
        )

    def answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            result = self.docker(
                "version", "--format", "{{.Server.Version}}", check=False, timeout=10
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    # -- state ---------------------------------------------------------------------------
    def _load(self) -> EngineState | None:
        if not self.state_file.exists():
            return None
        return EngineState(**json.loads(self.state_file.read_text()))

    def _save(self, state: EngineState) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self.state_file)

    def running(self) -> EngineState | None:
        """The recorded engine if its dockerd is still the process we started."""
        state = self._load()
        if (
            state
            and state.start_ticks is not None
            and proc_start_ticks(state.pid) == state.start_ticks
        ):
            return state
        return None

    # -- start ---------------------------------------------------------------------------
    def up(self, timeout: float = 90) -> EngineState:
        install_packages()
        state = self.running()
        if state and self.answers():
            return state
        if state:  # alive but not answering: replace it
            log.warning("engine pid %s does not answer; restarting it", state.pid)
            self._stop(state)
        recorded = self._load()
        if recorded:
            log.warning("engine pid %s was killed; cleaning what it left behind", recorded.pid)
        self._clean_leftovers(recorded)
        state = self._start()
        self._save(state)
        self._wait(state, timeout)
        log.info("container engine ready on %s (pid %s)", self.socket, state.pid)
        return state

    def _start(self) -> EngineState:
        for folder in (self.data_root, self.exec_root):
            folder.mkdir(parents=True, exist_ok=True)
        before = EngineState(
            pid=0,
            start_ticks=None,
            log_file=str(self.log_file),
            sysctls=host_sysctls.originals(RECORDED_SYSCTLS),
            forward_policy=forward_policy(),
            bridge_existed=link_exists(BRIDGE),
        )
        command = [
            "dockerd",
            f"--host=unix://{self.socket}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.home / 'docker.pid'}",
            f"--bip={BRIDGE_ADDRESS}",
            f"--default-address-pool={ADDRESS_POOL}",
            # Published ports bind loopback unless a run says otherwise.
            "--ip=127.0.0.1",
            "--storage-driver=overlay2",
            "--exec-opt=native.cgroupdriver=cgroupfs",
            f"--cgroup-parent=/{CGROUP_PARENT}",
            "--log-level=warn",
        ]
        self.log_file.touch(mode=0o600)
        with self.log_file.open("ab") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        before.pid = process.pid
        before.start_ticks = proc_start_ticks(process.pid)
        return before

    def _wait(self, state: EngineState, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc_start_ticks(state.pid) != state.start_ticks:
                raise EngineError(f"dockerd exited during start; log tail:\n{self._log_tail()}")
            if self.answers():
                return
            time.sleep(0.3)
        raise EngineError(
            f"dockerd not answering after {timeout:.0f}s on {self.socket}; log tail:\n"
            f"{self._log_tail()}"
        )

    def _log_tail(self, size: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_file.read_text(errors="replace")[-size:]
        return "(no log)"

    # -- stop ----------------------------------------------------------------------------
    def down(self) -> bool:
        """Stop the engine (containers are stopped by dockerd itself) and undo what it did to
        the host. Returns whether an engine was running."""
        state = self._load()
        if state is None:
            return False
        was_running = self.running() is not None
        if was_running:
            self._stop(state)
        self._clean_leftovers(state)
        return was_running

    def _stop(self, state: EngineState, timeout: float = 60) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc_start_ticks(state.pid) == state.start_ticks:
            time.sleep(0.2)
        if proc_start_ticks(state.pid) == state.start_ticks:
            log.warning("dockerd (pid %s) ignored SIGTERM for %ss; killing it", state.pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(state.pid, os.WNOHANG)
        log.info("stopped dockerd (pid %s)", state.pid)

    def _clean_leftovers(self, state: EngineState | None) -> None:
        """Remove whatever an engine under this home left: its containerd and shims, mounts
        below the data and exec roots, the bridge, Docker's iptables chains; then put the
        recorded host settings back."""
        if state:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(state.pid, os.WNOHANG)  # a killed child of ours: reap it
        for pid in processes_mentioning(self.home):
            log.info("killing leftover engine process %s", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        remove_cgroups(CGROUP_PARENT)
        for mount_point in mounts_below(self.home):
            subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)
        # The exec root is runtime state of processes that are gone now. Left in place, the
        # next containerd tries to restore every dead task in it, one by one, and on a busy
        # machine overruns dockerd's 15 s wait for containerd ("timeout waiting for
        # containerd to start").
        shutil.rmtree(self.exec_root, ignore_errors=True)
        remove_docker_iptables()
        bridge_existed = state.bridge_existed if state else False
        if not bridge_existed and link_exists(BRIDGE):
            subprocess.run(["ip", "link", "delete", BRIDGE], check=False, capture_output=True)
        if state:
            set_forward_policy(state.forward_policy)
            restored = host_sysctls.restore(state.sysctls, own_bridge=BRIDGE)
            if host_sysctls.other_project_bridges(BRIDGE):
                log.info("leaving the host's sysctls as they are: the local cluster still runs")
            for change in restored:
                log.info("restored %s", change)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        # dockerd refuses to start while its pid file names a live process, and a killed
        # dockerd leaves it behind: its pid may since belong to any other program.
        for stale in (self.socket, self.home / "docker.pid"):
            stale.unlink(missing_ok=True)

    def status(self) -> dict[str, object]:
        state = self.running()
        return {
            "running": state is not None,
            "pid": state.pid if state else None,
            "answers": self.answers() if state else False,
            "socket": str(self.socket),
            "data_root": str(self.data_root),
            "log": str(self.log_file),
        }


# -- host helpers ----------------------------------------------------------------------------


def install_packages() -> None:
    """Debian's engine and tools, installed once (needs root and apt)."""
    missing = sorted({pkg for cmd, pkg in PACKAGES.items() if not shutil.which(cmd)})
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise EngineError(
            f"missing {', '.join(missing)}: install them with apt-get as root "
            "(`make engine-up` does it when run as root)"
        )
    log.info("installing %s from Debian's packages", " ".join(missing))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
    ):
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise EngineError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")


def processes_mentioning(path: Path) -> list[int]:
    """Processes whose command line names ``path`` (a killed engine's containerd and
    shims), never this process."""
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def remove_cgroups(parent: str) -> None:
    """Kill every process left in a cgroup below ``parent`` (any controller), then remove
    those cgroups, deepest first."""
    groups = sorted(
        (g for g in Path("/sys/fs/cgroup").glob(f"*/{parent}") if g.is_dir()),
        key=str,
    )
    for group in groups:
        for procs in group.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
    for group in groups:
        children = [d for d in group.rglob("*") if d.is_dir()]
        for folder in sorted(children, key=lambda d: -len(d.parts)):
            _rmdir_when_empty(folder)
        _rmdir_when_empty(group)


def _rmdir_when_empty(folder: Path, attempts: int = 20) -> None:
    for _ in range(attempts):  # a killed process leaves its cgroup a moment later
        try:
            folder.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    log.warning("could not remove cgroup %s", folder)


def mounts_below(path: Path) -> list[str]:
    """Mount points under ``path``, deepest first."""
    prefix = str(path).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _iptables(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=False)


def forward_policy() -> str:
    for line in _iptables("-S", "FORWARD").stdout.splitlines():
        if line.startswith("-P FORWARD "):
            return line.split()[2]
    return "ACCEPT"


def set_forward_policy(policy: str) -> None:
    if forward_policy() != policy:
        _iptables("-P", "FORWARD", policy)


def remove_docker_iptables() -> None:
    """Delete the rules Docker put in the built-in chains (those jumping to its chains or
    naming its bridge or networks), then its own chains."""
    for table in ("filter", "nat"):
        rules = _iptables("-t", table, "-S").stdout.splitlines()
        for rule in rules:
            words = rule.split()
            if words[0] != "-A" or words[1].startswith("DOCKER"):
                continue
            if "DOCKER" in rule or BRIDGE in words or ENGINE_NETWORK_PREFIX in rule:
                _iptables("-t", table, "-D", *words[1:])
        chains = [r.split()[1] for r in rules if r.startswith("-N DOCKER")]
        for chain in chains:
            _iptables("-t", table, "-F", chain)
        for chain in chains:
            _iptables("-t", table, "-X", chain)


class SystemEngine(ContainerEngine):
    """The engine the docker client already reaches (``DOCKER_HOST`` or its default socket),
    as on a CI runner that brings its own: used as it is, never started or stopped here."""

    def env(self) -> dict[str, str]:
        return {}

    def answers(self) -> bool:
        try:
            return self.docker("version", check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def up(self, timeout: float = 90) -> EngineState:
        if not self.answers():
            raise EngineError("no docker engine answers; start one or use `make engine-up`")
        return EngineState(pid=0, start_ticks=None, log_file="")

    def down(self) -> bool:
        return False
