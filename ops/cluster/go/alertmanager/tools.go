//go:build tools

// Package tools pins the commands this module builds (see ops/scripts/build-cluster-binaries.sh).
package tools

import (
	_ "github.com/prometheus/alertmanager/cmd/alertmanager"
)
