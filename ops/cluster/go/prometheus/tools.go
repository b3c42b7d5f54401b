//go:build tools

// Package tools pins the command this module builds (see ops/scripts/build-cluster-binaries.sh).
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
