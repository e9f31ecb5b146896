package main

import (
	"context"
	"io"
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// TestSmoke runs the benchmark at a tiny scale (the floor and the operator,
// each in an API server of its own) so that `make test` notices when the
// harness no longer matches the operator: it once stopped working because
// the operator came to need a flag the harness did not pass, and nobody
// ran it for a while. What it measures at this scale means nothing.
func TestSmoke(t *testing.T) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Fatal("KUBEBUILDER_ASSETS is not set: run `make test` (or make envtest, then KUBEBUILDER_ASSETS=$PWD/bin/k8s go test ./hack/bench/operatorscale)")
	}
	ctrllog.SetLogger(logr.Discard())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := run(ctx, options{
		accounts: 6, labelsPerAccount: 1, namespaces: 2, workers: 4, rounds: 1,
		readyTimeout: 2 * time.Minute, operatorLogLevel: "info", floor: true,
	})
	if rep != nil {
		rep.print(io.Discard)
	}
	if err != nil {
		t.Fatal(err)
	}
	if rep.allReady <= 0 || len(rep.floors) != 1 {
		t.Fatalf("all Ready after %v, %d floors measured", rep.allReady, len(rep.floors))
	}
}
