package controllers

import (
	"os"
	"testing"

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
