package controllers

import (
	"context"
	"os"
	"testing"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

// The suite runs one real kube-apiserver and etcd (envtest) for every test
// in the package; each test works in namespaces of its own and starts the
// controllers it needs.
var env = &envtestkit.Env{Scheme: Scheme(), CacheOptions: CacheOptions}

func TestMain(m *testing.M) { os.Exit(env.Run(m)) }

// testRenderOptions run relays from a fixed image the tests can recognise.
var testRenderOptions = render.Options{Image: "registry.example.com/mailfleet:test"}

// withIndexes is a manager setup that registers the field indexes, as
// Setup does, and then the given controllers: for tests that run some
// controllers alone.
func withIndexes(setups ...func(ctrl.Manager) error) func(ctrl.Manager) error {
	return func(mgr ctrl.Manager) error {
		if err := IndexFields(context.Background(), mgr); err != nil {
			return err
		}
		for _, setup := range setups {
			if err := setup(mgr); err != nil {
				return err
			}
		}
		return nil
	}
}
