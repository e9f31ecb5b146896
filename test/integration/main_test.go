// Package integration runs the operator's manager and real mailfleet
// processes against a real API server (envtest), short of a kubelet: the
// relay from the very Deployment, ConfigMap and Secrets the operator
// rendered, and `mailfleet operator` as a cluster runs it. The cluster
// drill with real pods is test/e2e; the chart and image are test/install.
package integration

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/controllers"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
	"github.com/mailfleet/mailfleet/internal/syncbuffer"
)

var env = &envtestkit.Env{Scheme: controllers.Scheme(), CacheOptions: controllers.CacheOptions}

// renderOptions is what the tests' operator renders relays with; the
// image is not run (the tests run the binary they build).
var renderOptions = render.Options{Image: "registry.example.com/mailfleet:test"}

// relayWait is how long the operator and a relay may take to react; it is
// a ceiling, not a sleep: waits return as soon as their check passes.
const relayWait = 15 * time.Second

// ratelimitContainer is the name of the rate-limit sidecar in a relay's
// pod template.
const ratelimitContainer = "ratelimit"

// binDir holds the mailfleet binary the tests build; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	var err error
	binDir, err = os.MkdirTemp("", "mailfleet-integration")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := env.Run(m)
	os.RemoveAll(binDir)
	os.Exit(code)
}

var (
	buildOnce sync.Once
	buildErr  error
)

// mailfleetBinary builds the one binary once per test run.
func mailfleetBinary(t *testing.T) string {
	t.Helper()
	path := filepath.Join(binDir, "mailfleet")
	buildOnce.Do(func() {
		cmd := exec.Command("go", "build", "-o", path, "./cmd/mailfleet")
		cmd.Dir = envtestkit.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build mailfleet: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return path
}

// writeKubeconfig writes a kubeconfig for the API server as id into dir
// and returns its path.
func writeKubeconfig(t *testing.T, dir string, id envtestkit.Identity) string {
	t.Helper()
	path := filepath.Join(dir, "kubeconfig")
	if err := envtestkit.WriteKubeconfig(env.Config, id, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// httpOK is nil when url answers 200, as a kubelet probe wants.
func httpOK(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d", url, resp.StatusCode)
	}
	return nil
}

// startLogged starts cmd with its output collected, and kills it when the
// test ends, printing the output if the test failed. exited closes when the
// process ends.
func startLogged(t *testing.T, cmd *exec.Cmd, name string) (logs *syncbuffer.Buffer, exited <-chan struct{}) {
	t.Helper()
	logs = &syncbuffer.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("%s logs:\n%s", name, logs)
		}
	})
	return logs, done
}
