// Package install tests what mailfleet ships, as a user installs it: the
// Helm chart (charts/mailfleet), the kustomize bases (config/) and the
// image's binary (Dockerfile). The chart and kustomize output are applied to
// a real API server (envtest) and the operator runs from the very
// Deployment the chart renders.
//
// The package lives outside charts/ so that `helm package` ships no Go, and
// outside controllers/ so that it installs the CRDs itself, from the chart,
// into an API server of its own, as a cluster would get them.
package install

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/mailfleet/mailfleet/controllers"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

var (
	repoRoot = envtestkit.RepoRoot()
	chartDir = filepath.Join(repoRoot, "charts", "mailfleet")

	// The API server, with the operator's scheme and no mailfleet CRDs
	// (the chart installs them); TestMain starts it.
	env = &envtestkit.Env{Scheme: controllers.Scheme()}
	// Set by TestMain: a kubeconfig for kubectl and helm as the API
	// server's admin.
	adminKubeconfig string
	// workDir holds files shared by the tests (kubeconfig, the built
	// binary); TestMain removes it.
	workDir     string
	kubectlPath string
	helmPath    string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		fmt.Fprintln(os.Stderr, "KUBEBUILDER_ASSETS is not set: run `make test` (or make test-deps envtest, then KUBEBUILDER_ASSETS=$PWD/bin/k8s go test ./test/install)")
		return 1
	}
	kubectlPath = filepath.Join(assets, "kubectl")
	helmPath = filepath.Join(repoRoot, "bin", "helm")
	for _, tool := range []string{kubectlPath, helmPath} {
		if _, err := os.Stat(tool); err != nil {
			fmt.Fprintf(os.Stderr, "%s is missing: run make test-deps envtest (hack/install-helm.sh, hack/build-envtest.sh)\n", tool)
			return 1
		}
	}
	certManagerCRDs, err := envtestkit.CertManagerCRDs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// No mailfleet CRDs here: the chart installs them.
	env.CRDDirs = []string{certManagerCRDs, filepath.Join("testdata", "monitoring-crds.yaml")}
	stop, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop envtest:", err)
		}
	}()
	workDir, err = os.MkdirTemp("", "mailfleet-install")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(workDir)
	adminKubeconfig = filepath.Join(workDir, "kubeconfig")
	if err := envtestkit.WriteKubeconfig(env.Config, envtestkit.Identity{}, adminKubeconfig); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}
