//go:build e2e

// Package e2e runs the chart on the real single-node cluster of
// hack/cluster (make cluster-up; make test-e2e) and checks what a user sees:
// kubectl, helm, real pods and real SMTP clients over the relay's Service.
// docs/testing.md says what it covers and what it cannot.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

var (
	repoRoot   = envtestkit.RepoRoot()
	kubeconfig = filepath.Join(repoRoot, "bin", "cluster", "kubeconfig")
	kubectlBin = filepath.Join(repoRoot, "bin", "k8s", "kubectl")
	helmBin    = filepath.Join(repoRoot, "bin", "helm")
)

// imageTag is the tag of the mailfleet image `make test-e2e` built and
// loaded (E2E_IMAGE_TAG).
func imageTag(t *testing.T) string {
	tag := os.Getenv("E2E_IMAGE_TAG")
	if tag == "" {
		t.Fatal("E2E_IMAGE_TAG is not set: run the e2e tests with make test-e2e")
	}
	return tag
}

// run runs a command with the cluster's kubeconfig and returns its
// standard output; a failure includes standard error.
func run(ctx context.Context, stdin []byte, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	cmd.Dir = repoRoot
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s%s", filepath.Base(name), strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), nil
}

// mustRun is run within timeout, failing the test on error.
func mustRun(t *testing.T, timeout time.Duration, stdin []byte, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := run(ctx, stdin, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// kubectl runs kubectl, failing the test on error.
func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	return mustRun(t, 10*time.Minute, nil, kubectlBin, args...)
}

// kubectlIn runs kubectl with stdin.
func kubectlIn(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	return mustRun(t, 10*time.Minute, []byte(stdin), kubectlBin, args...)
}

func helm(t *testing.T, args ...string) string {
	t.Helper()
	return mustRun(t, 15*time.Minute, nil, helmBin, args...)
}

// getJSON decodes `kubectl get -o json`.
func getJSON(t *testing.T, into any, args ...string) {
	t.Helper()
	out := kubectl(t, append([]string{"get", "-o", "json"}, args...)...)
	if err := json.Unmarshal([]byte(out), into); err != nil {
		t.Fatalf("decode kubectl get %v: %v", args, err)
	}
}

// secretValue reads one key of a Secret.
func secretValue(t *testing.T, ns, name, key string) string {
	t.Helper()
	var s struct {
		Data map[string][]byte `json:"data"`
	}
	getJSON(t, &s, "-n", ns, "secret", name)
	v, ok := s.Data[key]
	if !ok {
		t.Fatalf("secret %s/%s has no key %s", ns, name, key)
	}
	return string(v)
}

// eventually polls f until it returns nil, failing the test with the last
// error once within has passed.
var eventually = envtestkit.Eventually

// dumpOnFailure prints what a person debugging a failed run looks at
// first: the namespace's events, its pods, and the logs of every container.
func dumpOnFailure(t *testing.T, namespaces ...string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for _, ns := range namespaces {
			for _, args := range [][]string{
				{"get", "-n", ns, "events", "--sort-by=.lastTimestamp"},
				{"get", "-n", ns, "pods", "-o", "wide"},
				{"get", "-n", ns, "smtprelays,smtpaccounts,smtplabels,certificates,issuers", "-o", "wide"},
			} {
				out, err := run(ctx, nil, kubectlBin, args...)
				t.Logf("$ kubectl %s\n%s%v", strings.Join(args, " "), out, errOrEmpty(err))
			}
			pods, _ := run(ctx, nil, kubectlBin, "get", "-n", ns, "pods", "-o", "name")
			for _, p := range strings.Fields(pods) {
				out, err := run(ctx, nil, kubectlBin, "logs", "-n", ns, p, "--all-containers", "--tail=60", "--prefix")
				t.Logf("$ kubectl logs -n %s %s\n%s%v", ns, p, out, errOrEmpty(err))
			}
		}
	})
}

func errOrEmpty(err error) any {
	if err == nil {
		return ""
	}
	return err
}

// redact keeps a key that was a command's argument out of the test's
// output: a failed command's error repeats its arguments.
func redact(err error, key string) error {
	if err == nil || key == "" {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), key, "<key>"))
}
