//go:build tools

// Package tools pins the commands this module builds (see ops/scripts/build-cluster-binaries.sh).
package tools

import (
	_ "github.com/argoproj/argo-rollouts/cmd/kubectl-argo-rollouts"
	_ "github.com/argoproj/argo-rollouts/cmd/rollouts-controller"
)
