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
import logging
import os
import shutil
import signal
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline_ops import host_sysctls
from pipeline_ops.base import commands, processes
from pipeline_ops.base.errors import CommandError, OpsError, WaitTimeout
from pipeline_ops.base.polling import wait_until
from pipeline_ops.base.processes import ProcessRecord, StateFile, reap
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
DOCKERD = "dockerd"  # the engine's name in its state file and its errors


class EngineError(OpsError):
    pass


@dataclass
class HostBefore:
    """What the machine had before the engine started, put back by ``down``. Kept in the
    engine's state file beside its process record."""

    sysctls: dict[str, str | None] = field(default_factory=dict)  # the machine's own values
    forward_policy: str = "ACCEPT"
    bridge_existed: bool = False


class ContainerEngine:
    def __init__(self, home: Path | None = None):
        self.home = Path(home or CACHE_DIR / "engine")
        self.socket = self.home / "docker.sock"
        self.state = StateFile(self.home / "state.json")
        self.data_root = self.home / "data"
        self.exec_root = self.home / "run"
        self.log_file = self.home / "dockerd.log"

    # -- the client --------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """What a docker client needs to talk to this engine (the legacy builder: Debian
        ships no buildx)."""
        return {"DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}

    def docker(
        self,
        *args: str,
        what: str = "",
        check: bool = True,
        timeout: float | None = None,
        stdin: str | None = None,
        secrets: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[Any]:
        """``docker ARGS`` against this engine (the operator's environment plus ``env()``:
        a CI runner's engine is reached through its own DOCKER_* settings)."""
        return commands.run(
            [docker_client(), *args], what=what or f"docker {args[0]}", check=check,
            timeout=timeout, stdin=stdin, env={**os.environ, **self.env()}, secrets=secrets,
        )  # fmt: skip

    def import_tree(self, root: Path, reference: str, changes: list[str], what: str) -> None:
        """``docker import`` of the directory ``root`` as ``reference``, streamed: tar piped
        into the client. The pipe is the shell's (with pipefail), as the one runner runs
        commands, not pipes; a tarball on disk would double the root's size for a moment."""
        commands.run(
            ["bash", "-o", "pipefail", "-c", 'tar -C "$1" -c . | "$2" import "${@:3}"', "bash",
             root, docker_client(), *changes, "-", reference],
            what=what, env={**os.environ, **self.env()}, timeout=None,
        )  # fmt: skip

    def answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            result = self.docker(
                "version", "--format", "{{.Server.Version}}", check=False, timeout=10
            )
        except CommandError:  # timed out
            return False
        return result.returncode == 0

    # -- state ---------------------------------------------------------------------------
    def recorded(self) -> ProcessRecord | None:
        """The dockerd last started here, alive or not."""
        return self.state.records().get(DOCKERD)

    def host_before(self) -> HostBefore | None:
        """The host's settings recorded before the engine started (None: nothing recorded)."""
        state = self.state.read()
        if not state:
            return None
        return HostBefore(**{k: state[k] for k in asdict(HostBefore()) if k in state})

    def running(self) -> ProcessRecord | None:
        """The recorded engine if its dockerd is still the process we started."""
        record = self.recorded()
        return record if record and record.alive else None

    # -- start ---------------------------------------------------------------------------
    def up(self, timeout: float = 90) -> ProcessRecord:
        install_packages()
        record = self.running()
        if record and self.answers():
            return record
        if record:  # alive but not answering: replace it
            log.warning("engine pid %s does not answer; restarting it", record.pid)
            processes.stop(record, timeout=60, group=False)
        recorded = self.recorded()
        if recorded:
            log.warning("engine pid %s was killed; cleaning what it left behind", recorded.pid)
        self._clean_leftovers()
        self.home.mkdir(parents=True, exist_ok=True)
        for folder in (self.data_root, self.exec_root):
            folder.mkdir(parents=True, exist_ok=True)
        host = HostBefore(
            sysctls=host_sysctls.originals(RECORDED_SYSCTLS),
            forward_policy=forward_policy(),
            bridge_existed=link_exists(BRIDGE),
        )
        # dockerd's own environment: it finds containerd, runc and iptables on PATH and
        # needs nothing else of the operator's.
        record = processes.start(
            DOCKERD, self.command(), log_file=self.log_file, env=processes.minimal_environment(),
            append=True,
        )  # fmt: skip
        self.state.write({**asdict(host), "processes": {DOCKERD: asdict(record)}})
        processes.wait_healthy(
            record, self.answers, timeout, what=f"answering on {self.socket}", every=0.3
        )
        log.info("container engine ready on %s (pid %s)", self.socket, record.pid)
        return record

    def command(self) -> list[str]:
        return [
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

    # -- stop ----------------------------------------------------------------------------
    def down(self) -> bool:
        """Stop the engine (containers are stopped by dockerd itself) and undo what it did to
        the host. Returns whether an engine was running."""
        if not self.state.read():
            return False
        record = self.running()
        if record:
            # dockerd alone, not its process group: it stops its containers and containerd
            processes.stop(record, timeout=60, group=False)
        self._clean_leftovers()
        return record is not None

    def _clean_leftovers(self) -> None:
        """Remove whatever an engine under this home left: its containerd and shims, mounts
        below the data and exec roots, the bridge, Docker's iptables chains; then put the
        recorded host settings back."""
        recorded, host = self.recorded(), self.host_before()
        if recorded:
            reap(recorded.pid)  # a killed child of ours
        for pid in processes_mentioning(self.home):
            log.info("killing leftover engine process %s", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        remove_cgroups(CGROUP_PARENT)
        for mount_point in mounts_below(self.home):
            commands.run(["umount", "-l", mount_point], what="unmount a killed engine's mount",
                         check=False)  # fmt: skip
        # The exec root is runtime state of processes that are gone now. Left in place, the
        # next containerd tries to restore every dead task in it, one by one, and on a busy
        # machine overruns dockerd's 15 s wait for containerd ("timeout waiting for
        # containerd to start").
        shutil.rmtree(self.exec_root, ignore_errors=True)
        remove_docker_iptables()
        bridge_existed = host.bridge_existed if host else False
        if not bridge_existed and link_exists(BRIDGE):
            commands.run(["ip", "link", "delete", BRIDGE], what="remove the engine's bridge",
                         check=False)  # fmt: skip
        if host:
            set_forward_policy(host.forward_policy)
            restored = host_sysctls.restore(host.sysctls, own_bridge=BRIDGE)
            if host_sysctls.other_project_bridges(BRIDGE):
                log.info("leaving the host's sysctls as they are: the local cluster still runs")
            for change in restored:
                log.info("restored %s", change)
        self.state.forget()
        # dockerd refuses to start while its pid file names a live process, and a killed
        # dockerd leaves it behind: its pid may since belong to any other program.
        for stale in (self.socket, self.home / "docker.pid"):
            stale.unlink(missing_ok=True)

    def status(self) -> dict[str, object]:
        record = self.running()
        return {
            "running": record is not None,
            "pid": record.pid if record else None,
            "answers": self.answers() if record else False,
            "socket": str(self.socket),
            "data_root": str(self.data_root),
            "log": str(self.log_file),
        }


# -- host helpers ----------------------------------------------------------------------------


def docker_client() -> str:
    client = shutil.which("docker")
    if not client:
        raise EngineError("the docker client is missing; run `make engine-up`")
    return client


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
        commands.run(command, what="install the engine's Debian packages", env=env, timeout=None)


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


def _rmdir_when_empty(folder: Path) -> None:
    def removed() -> bool:
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True

    try:  # a killed process leaves its cgroup a moment later
        wait_until(f"cgroup {folder} to empty", removed, timeout=2, every=0.1)
    except WaitTimeout:
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


def _iptables(*args: str) -> subprocess.CompletedProcess[Any]:
    return commands.run(["iptables", "-w", *args], what="iptables (Docker's rules)", check=False)


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
        except CommandError:  # timed out
            return False

    def up(self, timeout: float = 90) -> ProcessRecord:
        if not self.answers():
            raise EngineError("no docker engine answers; start one or use `make engine-up`")
        return ProcessRecord("docker", 0, None, [], "")

    def down(self) -> bool:
        return False
