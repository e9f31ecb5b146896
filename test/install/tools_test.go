package install

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

// command runs a tool against the test's API server as its admin, from the
// repository root, and returns its standard output; the error carries
// standard error, which is where helm and kubectl explain themselves.
func command(stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "KUBECONFIG="+adminKubeconfig,
		// helm keeps its caches and repositories config here, not in $HOME.
		"HELM_CACHE_HOME="+os.TempDir()+"/mailfleet-helm-cache",
		"HELM_CONFIG_HOME="+os.TempDir()+"/mailfleet-helm-config",
		"HELM_DATA_HOME="+os.TempDir()+"/mailfleet-helm-data")
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

func helm(args ...string) ([]byte, error) { return command(nil, helmPath, args...) }
func kubectl(stdin []byte, args ...string) ([]byte, error) {
	return command(stdin, kubectlPath, args...)
}

// renderChart runs `helm template` for a release "mailfleet" in namespace.
func renderChart(t *testing.T, namespace string, args ...string) []byte {
	t.Helper()
	out, err := helm(append([]string{"template", "mailfleet", chartDir, "--namespace", namespace}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// allOptional turns on every optional part of the chart.
var allOptional = []string{
	"--set", "serviceMonitor.enabled=true",
	"--set", "relayPodMonitor.enabled=true",
	"--set", "prometheusRule.enabled=true",
	"--set", "grafanaDashboard.enabled=true",
	"--set", "redis.enabled=true",
	"--set", "redis.auth.existingSecret=mailfleet-redis-auth",
	"--set", "nats.enabled=true",
	"--set", "nats.auth.enabled=true",
	"--set", "replicaCount=2",
}

// splitYAML decodes a stream of YAML documents, skipping empty ones.
func splitYAML(t *testing.T, data []byte) []*unstructured.Unstructured {
	t.Helper()
	docs, err := envtestkit.DecodeYAML(data)
	if err != nil {
		t.Fatal(err)
	}
	objs := make([]*unstructured.Unstructured, len(docs))
	for i, d := range docs {
		objs[i] = d.Object
	}
	return objs
}

// find returns the objects of a kind, and fails when want of them are not
// there (-1: any number).
func find(t *testing.T, objs []*unstructured.Unstructured, kind string, want int) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	if want >= 0 && len(out) != want {
		t.Fatalf("%d %s objects rendered, want %d", len(out), kind, want)
	}
	return out
}
