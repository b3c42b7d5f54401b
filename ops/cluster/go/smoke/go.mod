// A tiny static program the cluster's smoke tests run in pods (image FROM scratch).
module pipeline-ops/cluster/smoke

go 1.24.0
