package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/mailfleet/mailfleet/controllers"
)

// cluster is envtest plus the operator running against it.
type cluster struct {
	env         *envtest.Environment
	dir         string // work directory: kubeconfig, binary, operator log
	kubeconfig  string
	operatorLog string
	keep        bool

	cfg       *rest.Config
	client    client.Client
	clientset kubernetes.Interface

	operator *operatorProcess
	// metricsAddr and pprofAddr are where the operator serves its metrics
	// and, with -profile, pprof, on loopback ("" when it does not).
	metricsAddr, pprofAddr string
}

// startCluster starts envtest with mailfleet's and cert-manager's CRDs and,
// withOperator, builds the operator and writes a kubeconfig the operator
// process can use. On error the returned cluster, when not nil, still has
// to be stopped.
func startCluster(ctx context.Context, o options, withOperator bool) (*cluster, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		// envtest reads the variable itself; default to where
		// hack/build-envtest.sh puts the binaries.
		assets := filepath.Join(root, "bin", "k8s")
		if _, err := os.Stat(filepath.Join(assets, "kube-apiserver")); err != nil {
			return nil, fmt.Errorf("KUBEBUILDER_ASSETS is not set and %s has no kube-apiserver: run `make envtest` first", assets)
		}
		os.Setenv("KUBEBUILDER_ASSETS", assets)
	}
	certManager, err := goModDir(root, "github.com/cert-manager/cert-manager")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "mailfleet-operatorscale-")
	if err != nil {
		return nil, fmt.Errorf("work directory: %w", err)
	}
	c := &cluster{dir: dir, keep: o.keepDir, operatorLog: filepath.Join(dir, "operator.log")}
	binary := o.operatorBinary
	if binary == "" && withOperator {
		// Build before starting the API server, so a compile error costs
		// seconds, not an envtest start and stop.
		binary = filepath.Join(dir, "mailfleet")
		fmt.Fprintln(os.Stderr, "building ./cmd/mailfleet …")
		if err := goCommand(ctx, root, "build", "-o", binary, "./cmd/mailfleet"); err != nil {
			return c, err
		}
	}
	if withOperator {
		c.operator = &operatorProcess{binary: binary}
	}

	fmt.Fprintln(os.Stderr, "starting envtest …")
	c.env = &envtest.Environment{
		CRDDirectoryPaths: []string{
			filepath.Join(root, "config", "crd", "bases"),
			// The operator creates Certificates: the API server must know the type.
			filepath.Join(certManager, "deploy", "crds"),
		},
		ErrorIfCRDPathMissing: true,
	}
	if c.cfg, err = c.env.Start(); err != nil {
		c.env = nil // nothing to stop
		return c, fmt.Errorf("start envtest: %w", err)
	}
	// The operator authenticates as a user of its own, in system:masters as
	// envtest's admin is: the benchmark measures the operator, not RBAC.
	user, err := c.env.AddUser(envtest.User{Name: "mailfleet-operator", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return c, fmt.Errorf("envtest user for the operator: %w", err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return c, fmt.Errorf("operator kubeconfig: %w", err)
	}
	c.kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(c.kubeconfig, kubeconfig, 0o600); err != nil {
		return c, fmt.Errorf("write kubeconfig: %w", err)
	}

	// The benchmark's own clients must not be the bottleneck: no client-side
	// rate limit (the API server's priority and fairness still applies).
	cfg := rest.CopyConfig(c.cfg)
	cfg.QPS, cfg.Burst = -1, 0
	cfg.UserAgent = "mailfleet-operatorscale"
	if c.client, err = client.New(cfg, client.Options{Scheme: controllers.Scheme()}); err != nil {
		return c, fmt.Errorf("client: %w", err)
	}
	if c.clientset, err = kubernetes.NewForConfig(cfg); err != nil {
		return c, fmt.Errorf("clientset: %w", err)
	}
	return c, nil
}

// startOperator runs `mailfleet operator` against envtest.
func (c *cluster) startOperator(ctx context.Context, o options) error {
	var err error
	if c.metricsAddr, err = loopbackAddr(); err != nil {
		return err
	}
	args := []string{"operator",
		"--leader-elect=false",
		"--metrics-bind-address=" + c.metricsAddr,
		"--metrics-secure=false",
		"--health-probe-bind-address=0",
		"--relay-image=mailfleet:bench",
		// SmtpDomains' keys live in the operator's namespace.
		"--domain-key-namespace=" + relayNamespace,
		"--log-level=" + o.operatorLogLevel,
	}
	if o.profileDir != "" {
		if c.pprofAddr, err = loopbackAddr(); err != nil {
			return err
		}
		args = append(args, "--pprof-bind-address="+c.pprofAddr)
	}
	args = append(args, strings.Fields(o.operatorArgs)...)
	return c.operator.start(ctx, c.kubeconfig, c.operatorLog, args)
}

// operatorRSSMiB is the operator's current RSS, 0 without an operator.
func (c *cluster) operatorRSSMiB() float64 {
	if c.operator == nil {
		return 0
	}
	return c.operator.rssMiB()
}

// stop ends the operator, then envtest, and removes the work directory
// unless it is to be kept.
func (c *cluster) stop() error {
	var errs []error
	if c.operator != nil {
		errs = append(errs, c.operator.stop())
	}
	if c.env != nil {
		if err := c.env.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop envtest: %w", err))
		}
	}
	if c.keep {
		fmt.Fprintf(os.Stderr, "work directory kept: %s\n", c.dir)
	} else if c.dir != "" {
		os.RemoveAll(c.dir)
	}
	return errors.Join(errs...)
}

// moduleRoot is the directory of the main module's go.mod: the benchmark
// reads the CRDs and builds the binary from there.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run from inside the mailfleet module (no go.mod found)")
	}
	return filepath.Dir(gomod), nil
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

// goCommand runs the go command in root, with its output in the error.
func goCommand(ctx context.Context, root string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return nil
}
