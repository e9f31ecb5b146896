package controllers

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// The suite runs one real kube-apiserver and etcd (envtest, built from
// source by hack/build-envtest.sh) for every test in the package; each test
// works in namespaces of its own and starts the controllers it needs.
var (
	testCfg    *rest.Config
	testClient client.Client
)

func TestMain(m *testing.M) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fmt.Fprintln(os.Stderr, "KUBEBUILDER_ASSETS is not set: run `make test` (it builds the API server with hack/build-envtest.sh)")
		os.Exit(1)
	}
	ctrl.SetLogger(zap.New(zap.UseDevMode(true), zap.WriteTo(os.Stderr), zap.Level(zapLevel())))
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases"), certManagerCRDs()},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start envtest:", err)
		// Start fails after the API server is up when a CRD is refused (a
		// CEL rule over its cost budget, say): stop what it started.
		env.Stop()
		os.Exit(1)
	}
	testCfg = cfg
	testClient, err = client.New(cfg, client.Options{Scheme: Scheme()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		env.Stop()
		os.Exit(1)
	}
	code := m.Run()
	if err := env.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop envtest:", err)
	}
	os.Exit(code)
}

// certManagerCRDs is cert-manager's plain CRD YAML in the module cache; the
// operator creates Certificates, so the API server must know the type.
func certManagerCRDs() string {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..")
	out, err := goModDir(root, "github.com/cert-manager/cert-manager")
	if err != nil {
		panic(err)
	}
	return filepath.Join(out, "deploy", "crds")
}

func zapLevel() zapcore.Level {
	if os.Getenv("TEST_VERBOSE") != "" {
		return zapcore.DebugLevel
	}
	return zapcore.ErrorLevel // a passing run stays quiet
}

// goModDir asks the go command where a dependency's source is.
func goModDir(root, module string) (string, error) {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", module)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("locate module %s: %w", module, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// newNamespace creates a namespace for one test, removed when it ends.
func newNamespace(t *testing.T, labels map[string]string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "t-" + rand.String(8), Labels: labels}}
	if err := testClient.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testClient.Delete(context.Background(), ns) })
	return ns.Name
}

// startManager runs a manager with the given controllers for one test.
func startManager(t *testing.T, setup func(mgr ctrl.Manager) error) ctrl.Manager {
	t.Helper()
	mgr, _ := runManager(t, setup)
	return mgr
}

// runManager is startManager that also returns a stop function, for tests
// that restart the operator. Stopping twice is harmless.
func runManager(t *testing.T, setup func(mgr ctrl.Manager) error) (ctrl.Manager, func()) {
	t.Helper()
	return runManagerAs(t, testCfg, setup)
}

// runManagerAs is runManager talking to the API server with cfg (such as
// another user's identity).
func runManagerAs(t *testing.T, cfg *rest.Config, setup func(mgr ctrl.Manager) error) (ctrl.Manager, func()) {
	t.Helper()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 Scheme(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		Cache:                  CacheOptions(),
		HealthProbeBindAddress: "0",
		// Every test starts the same controllers in a manager of its own;
		// controller-runtime otherwise refuses a name used before in the process.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := setup(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	return mgr, stop
}

// eventually polls check until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// updateSpec changes obj as a user would: on the latest version, retrying
// when the operator's status write got there first.
func updateSpec(t *testing.T, obj client.Object, change func()) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := testClient.Get(context.Background(), client.ObjectKeyFromObject(obj), obj); err != nil {
			return err
		}
		change()
		return testClient.Update(context.Background(), obj)
	})
	if err != nil {
		t.Fatalf("update %s: %v", obj.GetName(), err)
	}
}
