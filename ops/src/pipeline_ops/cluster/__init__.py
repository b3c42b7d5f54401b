"""A real single-node Kubernetes on this machine (`python -m pipeline_ops.cluster up|down`).

Built from registry packages only (ops/cluster/binaries.tsv, ops/scripts/build-cluster-binaries.sh;
Debian's containerd, runc and CNI plugins). One module per concern:

| module | concern |
|---|---|
| layout | versions, binaries, addresses, ports and paths under ``.local/cluster`` |
| pki | certificates and kubeconfigs made with openssl |
| host | the host changes (bridge, sysctls, iptables, mounts, netns, cgroups) and their undoing |
| configs | the components' configuration files |
| images | single-binary images FROM scratch, imported into the cluster's containerd |
| addons | what runs in the cluster: CoreDNS, the Argo Rollouts controller, kube-network-policies |
| registry | `push`: images of `make images` into the cluster's registry, by digest |
| engine_images | the add-ons' images (Argo CD, redis, Spark Operator), built by the engine |
| argo_cd | Argo CD from its install manifest |
| git_server | the git daemon Argo CD reads, mirroring this repository's branches |
| spark_operator | the Spark Operator's controller and webhook |
| monitoring | the Prometheus Operator, its Prometheus and Alertmanager, the alert receiver |
| prometheus | the host's client of that Prometheus (its address, queries) |
| kubernetes | the Kubernetes components' command lines and health checks |
| components | the cluster as an ordered table: one entry per component, walked by up and down |
| launcher | walks the table: up (forward), status, down (backward) |

Everything runs commands through ``pipeline_ops.base.commands``, talks to the API server
through ``Layout.kubectl()`` (``base.kubectl.Kubectl``) and keeps its host processes as
``base.processes`` records in one state file.
"""

from pipeline_ops.base.errors import OpsError


class ClusterError(OpsError):
    pass
