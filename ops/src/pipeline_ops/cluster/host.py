"""What the cluster changes on this machine, recorded before it changes it, and undone.

``host.json`` (beside ``state.json``) records the sysctl values found before the first
change, whether br_netfilter was loaded by us, and the iptables chains that existed before;
a ``cluster-up`` that was killed leaves it behind, and the next ``up`` or ``down`` restores
from it rather than recording the changed values.

Undone by ``restore``: the rules this cluster added to chains it does not own (tagged with a
comment), the KUBE-*/CNI-* chains kubelet and kube-proxy created (those not there before),
mounts under the state directory (pod volumes, sandbox netns, container rootfs), the bridge
and its veths, kubelet's ``kubepods`` cgroups, the sysctls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import subprocess
from pathlib import Path

from pipeline_ops import host_sysctls
from pipeline_ops.base import commands
from pipeline_ops.cluster import ClusterError
from pipeline_ops.cluster.layout import BRIDGE, BRIDGE_IP, NODE_POD_CIDR, RULE_COMMENT, Layout

# Owned by the kube-network-policies pod; named here so that `down` removes it even when the
# pod had no time to (host.py must not import addons, which needs the cluster running). On
# this kernel its rules never get in (no nftables `queue` expression): see queue_pod_connections.
NETWORK_POLICIES_TABLE = ("inet", "kube-network-policies")

log = logging.getLogger(__name__)

# Set by us (forwarding, bridged traffic through iptables for Services) or by kubelet and
# kube-proxy at start.
SYSCTLS = (
    "net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables", "net.ipv4.conf.all.route_localnet",
    "vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.netfilter.nf_conntrack_max",
)  # fmt: skip
WE_SET = {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"}
OWNED_CHAINS = re.compile(r"^(KUBE-|CNI-)")
TABLES = ("filter", "nat", "mangle", "raw")


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return commands.run(command, what="the cluster's host changes", check=check)


def _chains(tool: str, table: str) -> set[str]:
    out = _run(f"{tool}-save", "-t", table, check=False).stdout
    return {line[1:].split()[0] for line in out.splitlines() if line.startswith(":")}


def _nft_tables() -> list[tuple[str, str]]:
    out = _run("nft", "list", "tables", check=False).stdout
    tables = [line.split() for line in out.splitlines() if line.startswith("table ")]
    return [(words[1], words[2]) for words in tables if len(words) >= 3]


class Host:
    def __init__(self, layout: Layout):
        self.layout = layout
        self.record_file = layout.root / "host.json"

    def _load(self) -> dict | None:
        if not self.record_file.exists():
            return None
        return json.loads(self.record_file.read_text())

    def _save(self, record: dict) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.record_file.write_text(json.dumps(record, indent=2))

    # -- prepare -----------------------------------------------------------------------
    def prepare(self) -> None:
        record = self._load()
        if record is None and Path(f"/sys/class/net/{BRIDGE}").exists():
            raise ClusterError(
                f"host: the bridge {BRIDGE} exists but this state directory did not make it: "
                "another cluster (another clone?) runs on this machine; stop it with its own "
                "`make cluster-down`"
            )
        if record is None:
            record = {
                "br_netfilter_loaded_by_us": False,
                "chains_before": {
                    f"{tool}/{table}": sorted(_chains(tool, table))
                    for tool in ("iptables", "ip6tables")
                    for table in TABLES
                },
            }
            record["nft_tables_before"] = _nft_tables()
            if not Path("/proc/sys/net/bridge").exists():
                _run("modprobe", "br_netfilter")
                record["br_netfilter_loaded_by_us"] = True
            # the machine's own values, shared with the Docker engine (host_sysctls)
            record["sysctls"] = host_sysctls.originals(SYSCTLS)
            self._save(record)  # before the first change
        for name, value in WE_SET.items():
            if host_sysctls.read_sysctl(name) != value:
                host_sysctls.write_sysctl(name, value)
        self._bridge()
        self.accept_bridge_forwarding()

    def _bridge(self) -> None:
        """The pods' bridge, made before the CNI plugin would, so the apiserver can bind its
        address before any pod exists."""
        if not Path(f"/sys/class/net/{BRIDGE}").exists():
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
        addresses = _run("ip", "-o", "-4", "addr", "show", "dev", BRIDGE).stdout
        if f" {BRIDGE_IP}/" not in addresses:
            _run("ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")

    def _forward_chain(self) -> str | None:
        """Docker's DOCKER-USER if it exists, else FORWARD if its policy drops, else none."""
        chains = _chains("iptables", "filter")
        if "DOCKER-USER" in chains:
            return "DOCKER-USER"
        policy = _run("iptables", "-S", "FORWARD", check=False).stdout.splitlines()
        return "FORWARD" if policy and policy[0].strip() == "-P FORWARD DROP" else None

    def accept_bridge_forwarding(self) -> None:
        """Idempotent: a Docker engine (re)started after the cluster resets FORWARD to DROP and
        makes a new DOCKER-USER chain without these rules, which silently cuts pod traffic."""
        chain = self._forward_chain()
        if chain is None:
            return
        for direction in ("-i", "-o"):
            rule = [direction, BRIDGE, "-m", "comment", "--comment", RULE_COMMENT, "-j", "ACCEPT"]
            if _run("iptables", "-C", chain, *rule, check=False).returncode != 0:
                _run("iptables", "-I", chain, "1", *rule)

    def queue_pod_connections(self, queue: int) -> None:
        """Hand each new connection of a pod to kube-network-policies' nfqueue ``queue``,
        which accepts or drops it by the cluster's NetworkPolicies. Its own nftables rules
        need the `queue` expression, which this kernel lacks (they fail with ENOENT and
        it serves the queue all the same); these are the same hooks in iptables, which has
        the NFQUEUE target here: after Services' DNAT, pod to pod and pod to outside
        (mangle POSTROUTING), pod to this machine (mangle INPUT from the bridge: the
        platform services, the API server). The node's own connections are not judged
        (kubelet's probes, the API server's webhooks), as kube-network-policies exempts
        root's. Fail closed: with no enforcer listening, a pod's new connections wait.
        Idempotent; tagged, so ``restore`` removes them."""
        tag = ["-m", "comment", "--comment", RULE_COMMENT]
        new = ["-m", "conntrack", "--ctstate", "NEW", *tag]
        judged = ["-j", "NFQUEUE", "--queue-num", str(queue)]
        rules = [
            ("POSTROUTING", ["-s", f"{BRIDGE_IP}/32", *new, "-j", "ACCEPT"]),
            ("POSTROUTING", ["-m", "owner", "--uid-owner", "0", *new, "-j", "ACCEPT"]),
            ("POSTROUTING", ["-s", NODE_POD_CIDR, *new, *judged]),
            ("POSTROUTING", ["-d", NODE_POD_CIDR, *new, *judged]),
            ("INPUT", ["-i", BRIDGE, "-s", NODE_POD_CIDR, "!", "-d", "127.0.0.0/8", *new,
                       *judged]),
        ]  # fmt: skip
        for chain, rule in rules:
            if _run("iptables", "-t", "mangle", "-C", chain, *rule, check=False).returncode:
                _run("iptables", "-t", "mangle", "-A", chain, *rule)

    # -- restore -----------------------------------------------------------------------
    def restore(self) -> list[str]:
        """Undo everything; what was undone, for the log. Safe to run twice. Without a
        record this state directory changed nothing on the host (the record is written
        before the first change), so nothing is touched."""
        record = self._load()
        if record is None:
            return []
        done: list[str] = []
        done += self._remove_iptables(record)
        done += self._unmount()
        done += self._remove_links()
        done += self._remove_cgroups()
        with contextlib.suppress(OSError):
            done += host_sysctls.restore(record.get("sysctls", {}), own_bridge=BRIDGE)
        loaded_by_us = record.get("br_netfilter_loaded_by_us")
        if loaded_by_us and _run("modprobe", "-r", "br_netfilter", check=False).returncode == 0:
            done.append("unloaded br_netfilter")
        self.record_file.unlink()
        return done

    def _remove_iptables(self, record: dict) -> list[str]:
        done = []
        before = record.get("chains_before", {})
        for tool in ("iptables", "ip6tables"):
            for table in TABLES:
                existing = set(before.get(f"{tool}/{table}", []))
                ours = {c for c in _chains(tool, table) if OWNED_CHAINS.match(c)} - existing
                rules = _run(f"{tool}-save", "-t", table, check=False).stdout.splitlines()
                for line in rules:
                    if not line.startswith("-A "):
                        continue
                    words = shlex.split(line)
                    target = words[words.index("-j") + 1] if "-j" in words else ""
                    tagged = RULE_COMMENT in words
                    if words[1] not in ours and (target in ours or tagged):
                        _run(tool, "-t", table, "-D", *words[1:], check=False)
                        done.append(f"{tool} -t {table} -D {' '.join(words[1:])}")
                for chain in ours:
                    _run(tool, "-t", table, "-F", chain, check=False)
                for chain in ours:
                    _run(tool, "-t", table, "-X", chain, check=False)
                if ours:
                    done.append(f"{tool} -t {table}: removed {len(ours)} chains")
        # iptables-nft leaves the (now empty) tables kube-proxy made it create: drop those
        # that were not there before and hold nothing.
        tools = {"ip": "iptables", "ip6": "ip6tables"}
        for family, table in set(_nft_tables()) - {
            tuple(t) for t in record.get("nft_tables_before", [])
        }:
            if family not in tools or "nft_tables_before" not in record:
                continue
            saved = _run(f"{tools[family]}-save", "-t", table, check=False).stdout.splitlines()
            builtin = all(not line.startswith(":") or line[1:].split()[1] != "-" for line in saved)
            if builtin and not any(line.startswith("-A ") for line in saved):
                _run("nft", "delete", "table", family, table, check=False)
                done.append(f"nft delete table {family} {table}")
        # The table kube-network-policies (a pod with the host's network) keeps its rules in.
        family, name = NETWORK_POLICIES_TABLE
        if (family, name) in set(_nft_tables()):
            _run("nft", "delete", "table", family, name, check=False)
            done.append(f"nft delete table {family} {name}")
        return done

    def _unmount(self) -> list[str]:
        root = str(self.layout.root)
        done = []
        for _ in range(5):  # a mount can hide others under it
            mounts = [
                line.split()[1].encode().decode("unicode_escape")
                for line in Path("/proc/self/mounts").read_text().splitlines()
            ]
            ours = sorted(
                {m for m in mounts if m == root or m.startswith(root + "/")}, reverse=True
            )
            if not ours:
                break
            for mount in ours:
                if _run("umount", "-l", mount, check=False).returncode == 0:
                    done.append(f"umount {mount}")
        return done

    def _remove_links(self) -> list[str]:
        done = []
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            for port in os.listdir(f"/sys/class/net/{BRIDGE}/brif"):
                _run("ip", "link", "delete", port, check=False)
                done.append(f"ip link delete {port}")
            _run("ip", "link", "delete", BRIDGE, check=False)
            done.append(f"ip link delete {BRIDGE}")
        return done

    def _remove_cgroups(self) -> list[str]:
        done = []
        for top in Path("/sys/fs/cgroup").glob("*/kubepods*"):
            for directory, _subdirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            if not top.exists():
                done.append(f"rmdir {top}")
        return done
