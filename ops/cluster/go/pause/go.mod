// The pod sandbox ("pause") program: no registry is reachable to pull one, so the cluster
// builds this into an image FROM scratch (ops/cluster/images/pause) and imports it.
module pipeline-ops/cluster/pause

go 1.24.0
