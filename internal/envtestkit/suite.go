package envtestkit

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// Env is one real kube-apiserver and etcd (envtest, built from source by
// hack/build-envtest.sh) shared by every test of a package, with
// mailfleet's CRDs and cert-manager's. Each test works in namespaces of
// its own and starts the controllers it needs. A package declares one and
// runs it from TestMain:
//
//	var env = &envtestkit.Env{Scheme: controllers.Scheme(), CacheOptions: controllers.CacheOptions}
//
//	func TestMain(m *testing.M) { os.Exit(env.Run(m)) }
//
// (The operator's scheme and cache options are given, not imported here:
// controllers' own tests use this package.)
type Env struct {
	// Scheme is the scheme of Client and of every manager.
	Scheme *runtime.Scheme
	// CacheOptions gives each manager its cache options (the operator's,
	// so tests cache what the operator caches); nil means the defaults.
	CacheOptions func() cache.Options
	// CRDDirs are the directories of the CRDs the API server starts with;
	// nil means mailfleet's and cert-manager's.
	CRDDirs []string

	// Set by Run (or Start): the API server, and a client of it as its
	// admin.
	Config *rest.Config
	Client client.Client
}

// Run starts the API server, runs the package's tests and stops it, and
// returns the exit code for os.Exit.
func (e *Env) Run(m *testing.M) int {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fmt.Fprintln(os.Stderr, "KUBEBUILDER_ASSETS is not set: run `make test` (it builds the API server with hack/build-envtest.sh)")
		return 1
	}
	ctrl.SetLogger(zap.New(zap.UseDevMode(true), zap.WriteTo(os.Stderr), zap.Level(zapLevel())))
	stop, err := e.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop envtest:", err)
	}
	return code
}

// Start starts the API server with the CRDs of CRDDirs and sets Config and
// Client; stop stops the server. Run does this around a package's tests; a
// TestMain with more to prepare calls Start itself.
func (e *Env) Start() (stop func() error, err error) {
	dirs := e.CRDDirs
	if dirs == nil {
		certManager, err := CertManagerCRDs()
		if err != nil {
			return nil, err
		}
		dirs = []string{MailfleetCRDs(), certManager}
	}
	api, cfg, c, err := startAPIServer(e.Scheme, dirs...)
	if err != nil {
		return nil, err
	}
	e.Config, e.Client = cfg, c
	return api.Stop, nil
}

// MailfleetCRDs is the directory of the operator's generated CRDs.
func MailfleetCRDs() string {
	return filepath.Join(RepoRoot(), "config", "crd", "bases")
}

// StartAPIServer starts an API server for one test, apart from the
// package's, with the CRDs under crdDirs, stopped when the test ends; it
// returns the server's config and a client with scheme.
func StartAPIServer(t testing.TB, scheme *runtime.Scheme, crdDirs ...string) (*rest.Config, client.Client) {
	t.Helper()
	api, cfg, c, err := startAPIServer(scheme, crdDirs...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { api.Stop() })
	return cfg, c
}

func startAPIServer(scheme *runtime.Scheme, crdDirs ...string) (*envtest.Environment, *rest.Config, client.Client, error) {
	api := &envtest.Environment{CRDDirectoryPaths: crdDirs, ErrorIfCRDPathMissing: true}
	cfg, err := api.Start()
	if err != nil {
		// Start fails after the API server is up when a CRD is refused (a
		// CEL rule over its cost budget, say): stop what it started.
		api.Stop()
		return nil, nil, nil, fmt.Errorf("start envtest: %w", err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		api.Stop()
		return nil, nil, nil, fmt.Errorf("client: %w", err)
	}
	return api, cfg, c, nil
}

func zapLevel() zapcore.Level {
	if os.Getenv("TEST_VERBOSE") != "" {
		return zapcore.DebugLevel
	}
	return zapcore.ErrorLevel // a passing run stays quiet
}

// Namespace creates a namespace for one test, removed when it ends.
func (e *Env) Namespace(t testing.TB, labels map[string]string) string {
	t.Helper()
	return e.CreateNamespace(t, "t-"+rand.String(8), labels)
}

// CreateNamespace is Namespace with a name of the test's choosing.
func (e *Env) CreateNamespace(t testing.TB, name string, labels map[string]string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := e.Client.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Client.Delete(context.Background(), ns) })
	return name
}

// ManagerOptions are the options of a test's manager: the Env's scheme
// and cache options, no metrics or probe listeners, and controller names
// that may repeat (every test starts the same controllers in a manager of
// its own; controller-runtime otherwise refuses a name used before in the
// process).
func (e *Env) ManagerOptions() ctrl.Options {
	opts := ctrl.Options{
		Scheme:                 e.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
	}
	if e.CacheOptions != nil {
		opts.Cache = e.CacheOptions()
	}
	return opts
}

// StartManager runs a manager with the controllers setup adds until the
// test ends.
func (e *Env) StartManager(t testing.TB, setup func(mgr ctrl.Manager) error) ctrl.Manager {
	t.Helper()
	mgr, _ := e.RunManager(t, setup)
	return mgr
}

// RunManager is StartManager that also returns a stop function, for tests
// that restart the operator. Stopping twice is harmless.
func (e *Env) RunManager(t testing.TB, setup func(mgr ctrl.Manager) error) (ctrl.Manager, func()) {
	t.Helper()
	return e.RunManagerAs(t, e.Config, setup)
}

// RunManagerAs is RunManager talking to the API server with cfg (such as
// another user's identity, or another API server).
func (e *Env) RunManagerAs(t testing.TB, cfg *rest.Config, setup func(mgr ctrl.Manager) error) (ctrl.Manager, func()) {
	t.Helper()
	mgr, err := ctrl.NewManager(cfg, e.ManagerOptions())
	if err != nil {
		t.Fatal(err)
	}
	if err := setup(mgr); err != nil {
		t.Fatal(err)
	}
	cancel, stopped := StartInBackground(t, mgr)
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-stopped
		})
	}
	t.Cleanup(stop)
	return mgr, stop
}

// StartInBackground starts mgr, failing the test if Start returns an
// error. cancel stops it, and stopped closes once Start has returned; the
// caller stops it (RunManagerAs stops its managers with the test).
func StartInBackground(t testing.TB, mgr ctrl.Manager) (cancel func(), stopped <-chan struct{}) {
	ctx, cancelCtx := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	return cancelCtx, done
}

// UpdateSpec changes obj as a user would: on the latest version, retrying
// when the operator's status write got there first.
func (e *Env) UpdateSpec(t testing.TB, obj client.Object, change func()) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := e.Client.Get(context.Background(), client.ObjectKeyFromObject(obj), obj); err != nil {
			return err
		}
		change()
		return e.Client.Update(context.Background(), obj)
	})
	if err != nil {
		t.Fatalf("update %s: %v", obj.GetName(), err)
	}
}

// Get reads a live object by namespace and name.
func (e *Env) Get(obj client.Object, ns, name string) error {
	return e.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, obj)
}
