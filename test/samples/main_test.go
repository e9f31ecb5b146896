// Package samples tests the manifests people copy and deploy, as they are
// written: config/samples, PROJECT, and the kustomize bases config/crd,
// config/rbac, config/manager and config/default, applied to a real API
// server (envtest) with the operator's controllers running. The chart is
// tested in test/install.
package samples

import (
	"os"
	"testing"

	"github.com/mailfleet/mailfleet/controllers"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

// env is the package's API server, with the CRDs from config/crd/bases.
var env = &envtestkit.Env{Scheme: controllers.Scheme(), CacheOptions: controllers.CacheOptions}

func TestMain(m *testing.M) { os.Exit(env.Run(m)) }
