"""`up`, `status`, `down`: the table of components (components.py) walked forward, read, and
walked backward.

up: each component in turn (the certificates, the host's changes, the host processes from
the registry to the scheduler, then what runs in the cluster), each waited on with a timeout;
a failure names the component and shows the end of its log. A state left by a
``cluster-up`` that did not finish (killed, or failed) is cleaned up first; a cluster that is
up and healthy is left as it is.

down: the environments' platform servers, then the table backward: the controllers, every
pod (so the kubelet tears down their sandboxes), the node and the API server by pid,
containers left in containerd killed, then the host changes undone (see host.py) and the
run's state removed (the certificates and the image store are kept for the next start).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path

from pipeline_ops.base.errors import OpsError
from pipeline_ops.base.processes import StateFile, free_port
from pipeline_ops.cluster import addons
from pipeline_ops.cluster.components import (
    COMPONENTS,
    AddOn,
    Component,
    HostChange,
    HostProcess,
    check_prerequisites,
)
from pipeline_ops.cluster.host import Host
from pipeline_ops.cluster.layout import NODE_NAME, Layout, binary
from pipeline_ops.cluster.pki import Pki
from pipeline_ops.cluster.platform import ClusterPlatform

log = logging.getLogger(__name__)


class Cluster:
    layout: Layout
    state: StateFile
    host: Host
    pki: Pki
    components: tuple[Component, ...]

    def __init__(
        self, state_dir: Path | None = None, components: tuple[Component, ...] = COMPONENTS
    ):
        self.layout = Layout(state_dir)
        self.state = self.layout.state
        self.host = Host(self.layout)
        self.pki = Pki(self.layout)
        self.components = components

    @property
    def host_processes(self) -> list[HostProcess]:
        return [c for c in self.components if isinstance(c, HostProcess)]

    @property
    def phase(self) -> str | None:
        """``starting`` while up runs, ``up`` once it finished; None when nothing ran."""
        return self.state.read().get("phase")

    def _set_phase(self, phase: str) -> None:
        self.state.write({**self.state.read(), "phase": phase})

    def ports(self) -> dict[str, int]:
        """The components' loopback ports, chosen free at the first start and kept in the
        run's state."""
        state = self.state.read()
        ports = {k: int(v) for k, v in state.get("ports", {}).items()}
        wanted = [name for c in self.components for name in c.ports if name not in ports]
        if wanted:
            ports.update({name: free_port() for name in wanted})
            self.state.write({**state, "ports": ports})
        return ports

    def node_ready(self) -> bool:
        try:
            out = self.layout.kubectl()(
                "get", "node", NODE_NAME, "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}", timeout=10,
            )  # fmt: skip
        except OpsError:
            return False
        return out.strip() == "True"

    # -- up --------------------------------------------------------------------------------
    def up(self, timeout: float = 120) -> dict[str, float]:
        records, phase = self.state.records(), self.phase
        if phase == "up" and all(
            c.name in records and records[c.name].alive and c.healthy(self)
            for c in self.host_processes
        ):
            for component in self.components:  # the engine may have restarted since
                if isinstance(component, HostChange) and component.refresh is not None:
                    component.refresh(self)
            log.info("cluster already up and healthy")
            return {}
        if records or phase or self.host.record_file.exists():
            log.info("cleaning up what an earlier cluster-up left (phase %s)", phase or "unknown")
            self.down()
        check_prerequisites(self.components, binary)
        timings: dict[str, float] = {}
        started = time.monotonic()
        self._set_phase("starting")
        for component in self.components:
            if isinstance(component, AddOn) and not component.enabled():
                log.warning(component.disabled)
                continue
            t0 = time.monotonic()
            component.up(self, timeout)
            timings[component.name] = round(time.monotonic() - t0, 1)
            log.info("%-24s ready in %5.1fs", component.name, timings[component.name])
        self._link_tools()
        self._set_phase("up")
        timings["total"] = round(time.monotonic() - started, 1)
        return timings

    def _link_tools(self) -> None:
        """``.local/cluster/bin``: kubectl (and the Argo Rollouts plugin once built)."""
        bin_dir = self.layout.dir("bin")
        for name in ("kubectl", "kubectl-argo-rollouts"):
            with contextlib.suppress(OpsError):
                target = binary(name)
                link = bin_dir / name
                link.unlink(missing_ok=True)
                link.symlink_to(target)

    # -- status ----------------------------------------------------------------------------
    def status(self) -> dict[str, dict[str, object]]:
        records = self.state.records()
        out: dict[str, dict[str, object]] = {}
        for component in self.host_processes:
            record = records.get(component.name)
            alive = record is not None and record.alive
            out[component.name] = {
                "pid": record.pid if record else None,
                "running": alive,
                "healthy": alive and component.healthy(self),
                "log": record.log_file if record else None,
            }
        if self.phase == "up" and out.get("kube-apiserver", {}).get("healthy"):
            out["node"] = {"healthy": self.node_ready()}
            for name, (namespace, workload) in addons.WORKLOADS.items():
                try:
                    ready = self.layout.kubectl()(
                        "-n", namespace, "get", workload, "-o",
                        "jsonpath={.status.readyReplicas}", timeout=10,
                    )  # fmt: skip
                except OpsError:
                    ready = ""
                out[name] = {"healthy": ready.strip() not in ("", "0")}
        return out

    # -- down ------------------------------------------------------------------------------
    def down(self) -> list[str]:
        """The table backward; what was stopped. Stale records (a pid gone, or reused by
        another program) are dropped without a signal."""
        alive = {n: r for n, r in self.state.records().items() if r.alive}
        # the environments' platform servers (cluster-run) listen on the bridge: first
        stopped: list[str] = [f"platform {name}" for name in ClusterPlatform(self.layout).down()]
        for component in reversed(self.components):
            stopped += component.down(self, alive)
        for component in self.components:
            for relative in component.run_state:
                shutil.rmtree(self.layout.root / relative, ignore_errors=True)
        self.state.forget()
        return stopped
