"""A real single-node Kubernetes on this machine (`python -m pipeline_ops.cluster up|down`).

Built from registry packages only (ops/cluster/binaries.tsv, ops/scripts/build-cluster-binaries.sh;
Debian's containerd, runc and CNI plugins). One module per concern:

| module | concern |
|---|---|
| layout | versions, binaries, addresses, ports and paths under ``.local/cluster`` |
| processes | start by pid with start ticks in a state file, health waits, stop by pid |
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
| prometheus | Prometheus on the host, discovering and scraping annotated pods |
| launcher | the order of it all: up, status, down |
"""


class ClusterError(RuntimeError):
    pass
