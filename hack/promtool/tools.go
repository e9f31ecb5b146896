//go:build tools

// Package tools pins promtool's module for hack/build-promtool.sh, which
// builds github.com/prometheus/prometheus/cmd/promtool from this module:
// its go.sum holds every dependency, so the build runs with -mod=readonly.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
