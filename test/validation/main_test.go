// Package validation tests the CRDs' admission rules (OpenAPI schema and
// CEL, from the markers in api/v1alpha1) against a real API server
// (envtest): what a user applying a wrong SmtpRelay, SmtpAccount or
// SmtpLabel is told. No controller runs here.
package validation

import (
	"os"
	"testing"

	"github.com/mailfleet/mailfleet/controllers"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

// env is the package's API server, with the CRDs from config/crd/bases.
var env = &envtestkit.Env{Scheme: controllers.Scheme()}

func TestMain(m *testing.M) { os.Exit(env.Run(m)) }
