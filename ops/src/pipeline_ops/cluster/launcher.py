"""`up`, `status`, `down`: the order in which the cluster's parts start, and stop.

up: certificates, host (bridge, sysctls, forwarding), etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, containerd (+ images), kubelet (node Ready),
kube-proxy, CoreDNS. Each is waited on with a timeout; a failure names the component and
shows the end of its log. A state left by a ``cluster-up`` that did not finish (killed, or
failed) is cleaned up first; a cluster that is up and healthy is left as it is.

down: the controllers, every pod (so the kubelet tears down their sandboxes), then kubelet,
kube-proxy, the API server and etcd by pid; containers left in containerd are killed, then
containerd; then the host changes are undone (see host.py) and the run's state removed
(the certificates and the image store are kept for the next start).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import requests
import urllib3

from pipeline_ops.cluster import (
    ClusterError,
    addons,
    argo_cd,
    configs,
    git_server,
    images,
    prometheus,
    spark_operator,
)
from pipeline_ops.cluster.host import Host, nft_queue_supported
from pipeline_ops.cluster.layout import (
    APISERVER_PORT,
    BRIDGE_IP,
    CLUSTER_CIDR,
    ENVIRONMENT_NAMESPACES,
    GIT_PORT,
    KUBELET_PORT,
    NODE_NAME,
    PROMETHEUS_PORT,
    REGISTRY,
    SERVICE_CIDR,
    Layout,
    binary,
)
from pipeline_ops.cluster.pki import Pki
from pipeline_ops.cluster.platform import PROMETHEUS, ClusterPlatform, host_server_objects
from pipeline_ops.cluster.processes import Processes
from pipeline_ops.local_platform import free_port

log = logging.getLogger(__name__)

ORDER = (
    "registry", "git-daemon", "etcd", "kube-apiserver", "kube-controller-manager",
    "kube-scheduler", "containerd", "kubelet", "kube-proxy", "prometheus",
)  # fmt: skip
HOST_BINARIES = (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
    "kube-proxy", "kubectl", "pause", "coredns", "rollouts-controller", "kubectl-argo-rollouts",
    "kube-network-policies", "registry", "argocd", "spark-operator", "prometheus",
)  # fmt: skip
# Wiped by down: what one run of the cluster holds. Kept: pki, the containerd image store.
RUN_STATE = ("etcd", "kubelet", "kube-proxy", "cni", "containerd/state", "ports", "prometheus")


def _get(url: str, **kwargs) -> requests.Response | None:
    """GET for a health check. The controller-manager and scheduler serve /healthz on
    127.0.0.1 with certificates they sign themselves, hence verify=False for those two."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            return requests.get(url, timeout=2, **kwargs)
    except requests.RequestException:
        return None


class Cluster:
    def __init__(self, state_dir: Path | None = None):
        self.layout = Layout(state_dir)
        self.processes = Processes(self.layout)
        self.host = Host(self.layout)
        self.pki = Pki(self.layout)

    # -- checks ----------------------------------------------------------------------------
    def _ports(self) -> dict[str, int]:
        """Ports on 127.0.0.1, chosen free at start and kept in the run's state."""
        path = self.layout.root / "ports"
        if path.exists():
            return dict(
                (k, int(v)) for k, v in (line.split("=") for line in path.read_text().split())
            )
        ports = {
            name: free_port()
            for name in ("etcd", "etcd-peer", "kube-controller-manager", "kube-scheduler",
                         "kubelet-healthz", "kube-proxy-healthz", "kube-proxy-metrics",
                         "kube-network-policies-metrics")
        }  # fmt: skip
        path.write_text("".join(f"{k}={v}\n" for k, v in ports.items()))
        return ports

    def _healthy(self, name: str) -> bool:
        ports = self._ports()
        pki = self.pki
        admin = (str(pki.cert("admin")), str(pki.key("admin")))
        checks: dict[str, Callable[[], bool]] = {
            "etcd": lambda: _ok(_get(f"http://127.0.0.1:{ports['etcd']}/health"), '"true"'),
            "kube-apiserver": lambda: _ok(
                _get(f"{self.layout.apiserver_url}/readyz", cert=admin, verify=str(pki.ca))
            ),
            "kube-controller-manager": lambda: _ok(
                _get(f"https://127.0.0.1:{ports['kube-controller-manager']}/healthz", verify=False)
            ),
            "kube-scheduler": lambda: _ok(
                _get(f"https://127.0.0.1:{ports['kube-scheduler']}/healthz", verify=False)
            ),
            "containerd": self._containerd_ok,
            "registry": lambda: _ok(_get(f"http://{REGISTRY}/v2/")),
            "git-daemon": lambda: _listening(BRIDGE_IP, GIT_PORT),
            "prometheus": lambda: _ok(_get(f"{prometheus.url()}/-/ready")),
            "kubelet": lambda: _ok(_get(f"http://127.0.0.1:{ports['kubelet-healthz']}/healthz")),
            "kube-proxy": lambda: _ok(
                _get(f"http://127.0.0.1:{ports['kube-proxy-healthz']}/healthz")
            ),
        }
        return checks[name]()

    def _containerd_ok(self) -> bool:
        try:
            images.ctr(self.layout, "version")
            return True
        except ClusterError:
            return False

    def _check_prerequisites(self) -> None:
        for name in HOST_BINARIES:
            binary(name)
        for tool in ("containerd", "ctr", "openssl", "iptables", "ip", "git"):
            if not shutil.which(tool):
                raise ClusterError(f"{tool} is not installed; run `make cluster-packages`")
        configs.cni_bin_dir()
        configs.runc()
        if os.geteuid() != 0:
            raise ClusterError("the cluster needs root (network namespaces, iptables, mounts)")

    def _check_port_free(self, address: str, port: int, component: str) -> None:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError as error:
                raise ClusterError(
                    f"{component}: {address}:{port} is taken by another program ({error}); "
                    "stop it or run `make cluster-down`"
                ) from error

    # -- up --------------------------------------------------------------------------------
    def up(self, timeout: float = 120) -> dict[str, float]:
        procs, phase = self.processes.load()
        if phase == "up" and all(n in procs and procs[n].alive and self._healthy(n) for n in ORDER):
            self.host.accept_bridge_forwarding()  # the engine may have restarted since
            log.info("cluster already up and healthy")
            return {}
        if procs or phase or self.host.record_file.exists():
            log.info("cleaning up what an earlier cluster-up left (phase %s)", phase or "unknown")
            self.down()
        self._check_prerequisites()
        timings: dict[str, float] = {}
        started = time.monotonic()

        def step(name: str, action: Callable[[], object]) -> None:
            t0 = time.monotonic()
            action()
            timings[name] = round(time.monotonic() - t0, 1)
            log.info("%-24s ready in %5.1fs", name, timings[name])

        self.processes.save({}, "starting")
        step("certificates", self.pki.ensure)
        step("host", self.host.prepare)
        self._check_port_free(BRIDGE_IP, APISERVER_PORT, "kube-apiserver")
        self._check_port_free(BRIDGE_IP, KUBELET_PORT, "kubelet")
        host, port = REGISTRY.split(":")
        self._check_port_free(host, int(port), "registry")
        self._check_port_free(BRIDGE_IP, GIT_PORT, "git-daemon")
        self._check_port_free(BRIDGE_IP, PROMETHEUS_PORT, "prometheus")
        for name in ORDER:
            step(name, functools.partial(self._start, name, timeout))
        step("coredns", lambda: self._coredns(timeout))
        step("capacity policy", lambda: addons.apply_capacity_policy(
            self.layout, ENVIRONMENT_NAMESPACES))  # fmt: skip
        # Argo CD's and the Spark Operator's pods start while the Rollouts controller is
        # waited on (their images come from the registry; built and pushed when missing).
        step("argo-cd apply", lambda: argo_cd.apply(self.layout))
        step("spark-operator apply", lambda: spark_operator.apply(self.layout))
        # a Docker engine started (and stopped) meanwhile to build images changes FORWARD
        self.host.accept_bridge_forwarding()
        step("argo-rollouts", lambda: addons.apply_argo_rollouts(self.layout, timeout))
        step("argo-cd", lambda: argo_cd.wait(self.layout, timeout))
        step("spark-operator", lambda: spark_operator.wait(self.layout, timeout))
        if nft_queue_supported():
            step(
                "kube-network-policies",
                lambda: addons.apply_network_policies(
                    self.layout, self._ports()["kube-network-policies-metrics"], timeout
                ),
            )
        else:
            log.warning(
                "NetworkPolicies are NOT enforced: this kernel lacks nftables' queue expression, "
                "which kube-network-policies needs (its rules fail with ENOENT)"
            )
        self._link_tools()
        self.processes.set_phase("up")
        timings["total"] = round(time.monotonic() - started, 1)
        return timings

    def _start(self, name: str, timeout: float) -> None:
        command, env = self._command(name)
        proc = self.processes.start(name, command, env=env)
        self.processes.wait(proc, lambda: self._healthy(name), timeout)
        if name == "containerd":
            imported = images.ensure_imported(self.layout, list(addons.IMAGES))
            if imported:
                log.info("imported images %s", ", ".join(imported))
        if name == "kubelet":
            self.processes.wait(proc, self._node_ready, timeout, what="Ready")

    def _node_ready(self) -> bool:
        try:
            out = addons.kubectl(
                self.layout, "get", "node", NODE_NAME, "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}", timeout=10,
            )  # fmt: skip
        except ClusterError:
            return False
        return out.strip() == "True"

    def _coredns(self, timeout: float) -> None:
        addons.apply_coredns(self.layout)
        addons.wait_rolled_out(self.layout, "kube-system", "coredns", timeout)

    def _command(self, name: str) -> tuple[list[str], dict[str, str] | None]:
        layout, pki, ports = self.layout, self.pki, self._ports()
        kubeconfig = str(layout.component_kubeconfig(name))
        if name == "etcd":
            peer = f"http://127.0.0.1:{ports['etcd-peer']}"
            client = f"http://127.0.0.1:{ports['etcd']}"
            return [
                str(binary("etcd")), "--name", NODE_NAME, "--data-dir", str(layout.dir("etcd")),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{NODE_NAME}={peer}", "--log-level", "warn",
            ], None  # fmt: skip
        if name == "kube-apiserver":
            return [
                str(binary(name)), f"--advertise-address={BRIDGE_IP}",
                f"--bind-address={BRIDGE_IP}", f"--secure-port={APISERVER_PORT}",
                f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
                f"--client-ca-file={pki.ca}",
                f"--tls-cert-file={pki.cert('apiserver')}",
                f"--tls-private-key-file={pki.key('apiserver')}",
                f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
                f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
                f"--kubelet-certificate-authority={pki.ca}",
                # the node's name resolves nowhere: reach the kubelet on the bridge address
                "--kubelet-preferred-address-types=InternalIP",
                f"--service-account-key-file={pki.dir / 'service-account.pub'}",
                f"--service-account-signing-key-file={pki.key('service-account')}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--allow-privileged=true", "--profiling=false", "--v=1",
                # CEL mutation (beta in 1.34, off by default): the node's capacity policy
                "--feature-gates=MutatingAdmissionPolicy=true",
                "--runtime-config=admissionregistration.k8s.io/v1beta1=true",
            ], None  # fmt: skip
        if name in ("kube-controller-manager", "kube-scheduler"):
            command = [
                str(binary(name)), f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}", "--bind-address=127.0.0.1",
                f"--secure-port={ports[name]}", "--leader-elect=false", "--profiling=false",
                "--v=1",
            ]  # fmt: skip
            if name == "kube-controller-manager":
                command += [
                    f"--cluster-cidr={CLUSTER_CIDR}", "--allocate-node-cidrs=true",
                    "--node-cidr-mask-size=24", f"--service-cluster-ip-range={SERVICE_CIDR}",
                    f"--root-ca-file={pki.ca}",
                    f"--service-account-private-key-file={pki.key('service-account')}",
                    f"--cluster-signing-cert-file={pki.ca}",
                    f"--cluster-signing-key-file={pki.key('ca')}",
                    "--use-service-account-credentials=true",
                ]  # fmt: skip
            return command, None
        if name == "registry":
            return [str(binary(name)), "serve", str(configs.registry(layout))], None
        if name == "prometheus":
            addons.kubectl(layout, "apply", "--server-side", "-f", "-",
                           stdin=json.dumps(prometheus.rbac()))  # fmt: skip
            # the Prometheus Operator's Service name, which the post-promotion analysis uses
            service = json.dumps(host_server_objects(PROMETHEUS, PROMETHEUS_PORT))
            addons.kubectl(layout, "apply", "--server-side", "--force-conflicts", "-f", "-",
                           stdin=service)  # fmt: skip
            config = prometheus.config(
                layout, pki.ca, pki.cert("prometheus"), pki.key("prometheus")
            )
            return prometheus.command(layout, config), None
        if name == "git-daemon":
            branches = git_server.sync_project(layout)
            log.info("git server: %s holds %s", git_server.PROJECT_REPOSITORY, " ".join(branches))
            return git_server.command(layout), None
        if name == "containerd":
            configs.cni(layout)  # before containerd's CRI looks for it
            return ["containerd", "--config", str(configs.containerd(layout)),
                    "--log-level", "warn"], None  # fmt: skip
        if name == "kubelet":
            config = configs.kubelet(layout, pki.dir, ports["kubelet-healthz"])
            return [
                str(binary(name)), f"--config={config}",
                f"--kubeconfig={layout.component_kubeconfig('kubelet-client')}",
                f"--root-dir={layout.dir('kubelet') / 'root'}", f"--hostname-override={NODE_NAME}",
                f"--node-ip={BRIDGE_IP}", "--v=1",
            ], None  # fmt: skip
        if name == "kube-proxy":
            config = configs.kube_proxy(
                layout, ports["kube-proxy-healthz"], ports["kube-proxy-metrics"]
            )
            return [str(binary(name)), f"--config={config}", "--v=1"], None
        raise ClusterError(f"unknown component {name}")  # pragma: no cover

    def _link_tools(self) -> None:
        """``.local/cluster/bin``: kubectl (and the Argo Rollouts plugin once built)."""
        bin_dir = self.layout.dir("bin")
        for name in ("kubectl", "kubectl-argo-rollouts"):
            with contextlib.suppress(ClusterError):
                target = binary(name)
                link = bin_dir / name
                link.unlink(missing_ok=True)
                link.symlink_to(target)

    # -- status ----------------------------------------------------------------------------
    def status(self) -> dict[str, dict[str, object]]:
        procs, phase = self.processes.load()
        out: dict[str, dict[str, object]] = {}
        for name in ORDER:
            proc = procs.get(name)
            alive = proc is not None and proc.alive
            out[name] = {
                "pid": proc.pid if proc else None,
                "running": alive,
                "healthy": alive and self._healthy(name),
                "log": proc.log_file if proc else None,
            }
        if phase == "up" and out["kube-apiserver"]["healthy"]:
            out["node"] = {"healthy": self._node_ready()}
            for name, (namespace, deployment) in addons.DEPLOYMENTS.items():
                try:
                    ready = addons.kubectl(
                        self.layout, "-n", namespace, "get", "deployment", deployment, "-o",
                        "jsonpath={.status.readyReplicas}", timeout=10,
                    )  # fmt: skip
                except ClusterError:
                    ready = ""
                out[name] = {"healthy": ready.strip() not in ("", "0")}
        return out

    # -- down ------------------------------------------------------------------------------
    def down(self) -> list[str]:
        procs, _ = self.processes.load()
        alive = {n: p for n, p in procs.items() if p.alive}
        # the environments' platform servers (cluster-run) listen on the bridge: first
        stopped: list[str] = [f"platform {name}" for name in ClusterPlatform(self.layout).down()]
        for name in ("kube-controller-manager", "kube-scheduler"):
            if self.processes.stop(name):
                stopped.append(name)
        if {"kube-apiserver", "kubelet"} <= alive.keys():
            self._delete_pods()
        for name in ("prometheus", "kubelet", "kube-proxy", "kube-apiserver", "etcd", "registry",
                     "git-daemon"):  # fmt: skip
            if self.processes.stop(name):
                stopped.append(name)
        if "containerd" in alive:
            self._remove_containers()
        if self.processes.stop("containerd"):
            stopped.append("containerd")
        if self.host.record_file.exists():  # this run changed the host: it may have pods
            self._kill_leftover_pod_processes()
        for line in self.host.restore():
            log.info("undone: %s", line)
        for relative in RUN_STATE:
            shutil.rmtree(self.layout.root / relative, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (self.layout.root / relative).unlink()
        self.processes.forget()
        return stopped

    def _delete_pods(self, timeout: float = 30) -> None:
        with contextlib.suppress(ClusterError):
            addons.kubectl(
                self.layout, "delete", "pods", "--all", "--all-namespaces", "--wait=false",
                "--grace-period=1", timeout=30,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not images.ctr(self.layout, "tasks", "list", "--quiet").split():
                    return
            except ClusterError:
                return
            time.sleep(0.5)

    def _remove_containers(self) -> None:
        with contextlib.suppress(ClusterError):
            for task in images.ctr(self.layout, "tasks", "list", "--quiet").split():
                with contextlib.suppress(ClusterError):
                    images.ctr(self.layout, "tasks", "kill", "--signal", "SIGKILL", task)
                for _ in range(20):
                    try:
                        images.ctr(self.layout, "tasks", "delete", task)
                        break
                    except ClusterError:
                        time.sleep(0.25)
            for container in images.ctr(self.layout, "containers", "list", "--quiet").split():
                with contextlib.suppress(ClusterError):
                    images.ctr(self.layout, "containers", "delete", container)

    def _kill_leftover_pod_processes(self) -> None:
        """After a killed run: the pods' processes (in kubelet's kubepods cgroups) and the
        shims of this cluster's containerd (their command line names its socket)."""
        pids: set[int] = set()
        for procs_file in Path("/sys/fs/cgroup/pids").glob("kubepods*/**/cgroup.procs"):
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in procs_file.read_text().split()}
        socket_path = str(self.layout.containerd_socket)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                    if b"containerd-shim" in cmdline[0] and socket_path.encode() in cmdline:
                        pids.add(int(entry.name))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                log.info("killed leftover pod process %s", pid)
        if pids:
            time.sleep(1)


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def _ok(response: requests.Response | None, body: str | None = None) -> bool:
    return (
        response is not None
        and response.status_code == 200
        and (body is None or body in response.text)
    )
