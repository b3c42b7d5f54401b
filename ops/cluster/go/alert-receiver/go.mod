// The cluster's alert webhook receiver: where its Alertmanager delivers every notification
// (a tiny static program, in an image FROM scratch, like pause and smoke).
module pipeline-ops/cluster/alert-receiver

go 1.24.0
