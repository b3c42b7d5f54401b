"""The configuration files of containerd, the CNI bridge, kubelet and kube-proxy.

containerd is the cluster's own instance (its own socket, root and state under
``.local/cluster/containerd``), not the Docker engine's. What this machine needs (see
shared/CLUSTER.md): ``restrict_oom_score_adj`` (no CAP_SYS_RESOURCE, so runc cannot lower
oom_score_adj), cgroupfs and ``failCgroupV1: false`` (cgroup v1), a sandbox image built here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline_ops.cluster import ClusterError
from pipeline_ops.cluster.layout import (
    BRIDGE,
    BRIDGE_IP,
    CLUSTER_CIDR,
    CLUSTER_DOMAIN,
    DNS_SERVICE_IP,
    KUBELET_PORT,
    NODE_NAME,
    NODE_POD_CIDR,
    PROJECT_REGISTRY,
    REGISTRY,
    Layout,
)

PAUSE_IMAGE = "pr-anomaly.local/pause:v1"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")


def cni_bin_dir() -> str:
    for directory in CNI_BIN_DIRS:
        if Path(directory, "bridge").exists():
            return directory
    raise ClusterError("CNI bridge plugin not found in /usr/lib/cni; run `make cluster-packages`")


def runc() -> str:
    found = shutil.which("runc")
    if not found:
        raise ClusterError("runc is not installed; run `make cluster-packages`")
    return found


def containerd(layout: Layout) -> Path:
    base = layout.dir("containerd")
    cni_conf = layout.dir("cni") / "net.d"
    cni_conf.mkdir(exist_ok=True)
    config = f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{layout.containerd_socket}"

[ttrpc]
  address = "{base}/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc()}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{REGISTRY}"]
    endpoint = ["http://{REGISTRY}"]
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{PROJECT_REGISTRY}"]
    endpoint = ["http://{PROJECT_REGISTRY}"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin_dir()}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""
    path = base / "config.toml"
    path.write_text(config)
    return path


def cni(layout: Layout) -> Path:
    """The bridge plugin on the bridge ``host`` made, host-local addresses of this node's /24;
    no masquerading: pods talk to each other and to the host, nothing else."""
    conf = {
        "cniVersion": "1.0.0",
        "name": "pr-anomaly",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": NODE_POD_CIDR, "gateway": BRIDGE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.dir("cni") / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    path = layout.dir("cni") / "net.d" / "10-pr-anomaly.conflist"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(conf, indent=2))
    return path


def kubelet(layout: Layout, pki_dir: Path, healthz_port: int) -> Path:
    root = layout.dir("kubelet")
    resolv = root / "resolv.conf"
    # Pods with dnsPolicy Default get this: no upstream resolver, nothing leaves the machine.
    resolv.write_text("options ndots:1\n")
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": BRIDGE_IP,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki_dir / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki_dir / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki_dir / "kubelet.key"),
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(resolv),
        "podCIDR": NODE_POD_CIDR,
        "podLogsDir": str(root / "pod-logs"),
        "maxPods": 60,
        "serializeImagePulls": False,
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%",
                         "imagefs.available": "2%"},
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "protectKernelDefaults": False,
        "makeIPTablesUtilChains": False,
        "localStorageCapacityIsolation": True,
        "registerNode": True,
        "staticPodPath": "",
    }  # fmt: skip
    path = root / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def kube_proxy(layout: Layout, healthz_port: int, metrics_port: int) -> Path:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(layout.component_kubeconfig("kube-proxy"))},
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": CLUSTER_CIDR,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # NodePorts only on the bridge address, never on the machine's own interfaces.
        "nodePortAddresses": [f"{BRIDGE_IP}/32"],
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        # Leave the machine's conntrack settings alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
    }  # fmt: skip
    path = layout.dir("kube-proxy") / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def registry(layout: Layout, address: str = REGISTRY, htpasswd: Path | None = None) -> Path:
    """distribution's configuration: filesystem storage under ``.local/cluster/registry``
    (kept across runs, like the containerd image store), loopback only; with ``htpasswd``,
    every request authenticated (the project's registry, ``PROJECT_REGISTRY``)."""
    name = "registry" if address == REGISTRY else "project-registry"
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(layout.dir(name) / "data")},
                    "delete": {"enabled": True}},
        "http": {"addr": address},
    }  # fmt: skip
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "pr-anomaly-mlops", "path": str(htpasswd)}}
    path = layout.dir(name) / "config.json"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path
