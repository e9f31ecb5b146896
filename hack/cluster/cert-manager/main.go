// Command cert-manager-controller runs cert-manager's own controllers for
// selfSigned and CA issuers and for Certificates, for mailfleet's test
// cluster (see README.md). cert-manager's released controller binary lives in
// a nested module that the module proxy does not serve, so this small main
// wires the same exported packages (github.com/cert-manager/cert-manager
// pkg/controller/...) the way that binary does: a ContextFactory, the
// registered controller constructors, shared informer factories started after
// every controller has asked for its informers.
//
// hack/cluster/cert-manager/build.sh builds it into
// bin/cluster/bin/cert-manager-controller.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"

	"github.com/cert-manager/cert-manager/pkg/controller"
	crapprover "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	crca "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	crselfsigned "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	"github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	"github.com/cert-manager/cert-manager/pkg/controller/issuers"
	"github.com/cert-manager/cert-manager/pkg/healthz"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	"github.com/cert-manager/cert-manager/pkg/util"
	utilfeature "github.com/cert-manager/cert-manager/pkg/util/feature"

	// The issuers and clusterissuers controllers set up whichever issuer
	// types have registered themselves. Only these two are linked in, so an
	// ACME, Vault or Venafi Issuer never becomes Ready here: it fails with
	// an error in its status instead of appearing to work.
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

// controllers are the cert-manager controllers this binary runs, by the names
// they register under (the names cert-manager's --controllers flag takes).
// Importing a controller package registers it; the list both documents and
// checks that each one the cluster needs is linked in.
var controllers = []string{
	// Issuer and ClusterIssuer readiness (status condition Ready).
	issuers.ControllerName,
	clusterissuers.ControllerName,
	// CertificateRequests: every request must be Approved before a signer
	// touches it; without an approval policy engine cert-manager approves
	// requests for its own issuer kinds itself.
	crapprover.ControllerName,
	crca.CRControllerName,
	crselfsigned.CRControllerName,
	// Certificates: decide when to issue (trigger), hold the next private
	// key (key manager), create the CertificateRequest (request manager),
	// write the signed certificate into the Secret (issuing), report Ready
	// (readiness), and prune old CertificateRequests (revision manager).
	trigger.ControllerName,
	keymanager.ControllerName,
	requestmanager.ControllerName,
	issuing.ControllerName,
	readiness.ControllerName,
	revisionmanager.ControllerName,
}

type options struct {
	master, kubeconfig       string
	qps                      float32
	burst                    int
	clusterResourceNamespace string
	workers                  int
	enableOwnerRef           bool
	minBackoff, maxBackoff   time.Duration
	metricsAddr, healthzAddr string
	featureGates             map[string]bool
	logging                  *logsapi.LoggingConfiguration
	copiedAnnotationPrefixes []string
	printControllersAndExit  bool
}

func newFlags(o *options) *pflag.FlagSet {
	fs := pflag.NewFlagSet("cert-manager-controller", pflag.ContinueOnError)
	fs.StringVar(&o.master, "master", "", "API server address; overrides the kubeconfig's. Empty: in-cluster config or --kubeconfig.")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Path to a kubeconfig, for running outside the cluster.")
	// Defaults as in cert-manager's controller configuration.
	fs.Float32Var(&o.qps, "kube-api-qps", 20, "Client-side QPS limit, used only when the API server has no API Priority and Fairness.")
	fs.IntVar(&o.burst, "kube-api-burst", 50, "Client-side burst limit, used only when the API server has no API Priority and Fairness.")
	// cert-manager itself defaults to kube-system; its Helm chart passes its
	// own namespace, and so does this default, so ClusterIssuers' key pairs
	// live beside the controller rather than among the cluster's own.
	fs.StringVar(&o.clusterResourceNamespace, "cluster-resource-namespace", "cert-manager",
		"Namespace of the Secrets that ClusterIssuers refer to (a CA ClusterIssuer's spec.ca.secretName).")
	fs.IntVar(&o.workers, "concurrent-workers", 5, "Workers per controller.")
	fs.BoolVar(&o.enableOwnerRef, "enable-certificate-owner-ref", false,
		"Make each Certificate the owner of its Secret, so deleting the Certificate deletes the Secret.")
	fs.DurationVar(&o.minBackoff, "certificate-request-minimum-backoff-duration", time.Hour,
		"First wait before retrying a Certificate whose request failed; doubles with each failure.")
	fs.DurationVar(&o.maxBackoff, "certificate-request-maximum-backoff-duration", 32*time.Hour,
		"Longest wait before retrying a Certificate whose request failed.")
	fs.StringSliceVar(&o.copiedAnnotationPrefixes, "copied-annotation-prefixes",
		[]string{"*", "-kubectl.kubernetes.io/", "-fluxcd.io/", "-argocd.argoproj.io/"},
		"Annotation key prefixes copied from a Certificate to its CertificateRequests; a leading - excludes.")
	fs.StringVar(&o.metricsAddr, "metrics-listen-address", "0.0.0.0:9402", "Address of the Prometheus /metrics endpoint; empty disables it.")
	fs.StringVar(&o.healthzAddr, "healthz-listen-address", "0.0.0.0:9403", "Address of the /livez endpoint for the liveness probe; empty disables it.")
	o.featureGates = map[string]bool{}
	fs.Var(cliflag.NewMapStringBool(&o.featureGates), "feature-gates", "cert-manager feature gates, key=value pairs.")
	fs.BoolVar(&o.printControllersAndExit, "print-controllers", false, "Print the controllers this binary runs and exit.")
	o.logging = logsapi.NewLoggingConfiguration()
	logf.AddFlagsNonDeprecated(o.logging, fs)
	return fs
}

func main() {
	logf.InitLogs()
	defer logf.FlushLogs()

	o := &options{}
	fs := newFlags(o)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if o.printControllersAndExit {
		for _, name := range controllers {
			fmt.Println(name)
		}
		return
	}
	if err := utilfeature.DefaultMutableFeatureGate.SetFromMap(o.featureGates); err != nil {
		fmt.Fprintln(os.Stderr, "--feature-gates:", err)
		os.Exit(2)
	}
	if err := logf.ValidateAndApply(o.logging); err != nil {
		fmt.Fprintln(os.Stderr, "logging flags:", err)
		os.Exit(2)
	}

	// SIGTERM from the kubelet stops the controllers and servers gracefully.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, logf.Log, "controller")

	if err := run(ctx, o); err != nil {
		logf.Log.Error(err, "cert-manager-controller failed")
		logf.FlushLogs()
		os.Exit(1)
	}
}

func run(parent context.Context, o *options) error {
	log := logf.FromContext(parent)
	v := util.VersionInfo()
	log.Info("starting cert-manager controllers", "version", v.GitVersion, "go_version", v.GoVersion, "controllers", controllers)

	rootCtx, cancel := context.WithCancel(parent)
	defer cancel()
	g, rootCtx := errgroup.WithContext(rootCtx)

	factory, err := controller.NewContextFactory(rootCtx, controller.ContextOptions{
		APIServerHost:      o.master,
		Kubeconfig:         o.kubeconfig,
		KubernetesAPIQPS:   o.qps,
		KubernetesAPIBurst: o.burst,
		IssuerOptions: controller.IssuerOptions{
			ClusterResourceNamespace: o.clusterResourceNamespace,
			// Only meaningful for cloud issuers (ACME DNS-01 providers,
			// Vault), none of which are linked in; off so nothing reads
			// the node's environment.
			ClusterIssuerAmbientCredentials: false,
			IssuerAmbientCredentials:        false,
		},
		CertificateOptions: controller.CertificateOptions{
			EnableOwnerRef:                           o.enableOwnerRef,
			CopiedAnnotationPrefixes:                 o.copiedAnnotationPrefixes,
			CertificateRequestMinimumBackoffDuration: o.minBackoff,
			CertificateRequestMaximumBackoffDuration: o.maxBackoff,
		},
		// Gateway API support stays off: the Gateway shim is not run, and
		// leaving it off keeps the factory from requiring Gateway CRDs.
	})
	if err != nil {
		return err
	}
	// The base context owns the shared informer factories every controller
	// context shares, and the metrics registry.
	base, err := factory.Build()
	if err != nil {
		return err
	}

	if o.metricsAddr != "" {
		// The ACME collector is left out on purpose: it would start a
		// Challenge informer, which needs the ACME CRDs and RBAC this
		// cluster does not grant.
		base.Metrics.SetupCertificateCollector(base.SharedInformerFactory.Certmanager().V1().Certificates().Lister())
		base.Metrics.SetupIssuerCollector(base.SharedInformerFactory.Certmanager().V1().Issuers().Lister())
		base.Metrics.SetupClusterIssuerCollector(base.SharedInformerFactory.Certmanager().V1().ClusterIssuers().Lister())
		ln, err := (&net.ListenConfig{}).Listen(rootCtx, "tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		srv := base.Metrics.NewServer(ln)
		serveUntilDone(rootCtx, g, srv, ln)
		log.Info("serving metrics", "address", ln.Addr().String())
	}
	if o.healthzAddr != "" {
		ln, err := (&net.ListenConfig{}).Listen(rootCtx, "tcp", o.healthzAddr)
		if err != nil {
			return fmt.Errorf("healthz listener: %w", err)
		}
		// The leader-election check inside is always healthy: this binary
		// does not elect a leader (see README.md). The clock-skew check
		// still applies.
		hs := healthz.NewServer(20 * time.Second)
		g.Go(func() error { return hs.Start(rootCtx, ln) })
		log.Info("serving /livez", "address", ln.Addr().String())
	}

	known := controller.Known()
	for _, name := range controllers {
		fn, ok := known[name]
		if !ok {
			cancel()
			_ = g.Wait()
			return fmt.Errorf("controller %q is not linked in", name)
		}
		iface, err := fn(factory)
		if err != nil {
			cancel()
			_ = g.Wait()
			return fmt.Errorf("constructing controller %s: %w", name, err)
		}
		g.Go(func() error {
			log.V(logf.InfoLevel).Info("starting controller", "controller", name)
			return iface.Run(o.workers, rootCtx)
		})
	}
	for name := range known {
		if !slices.Contains(controllers, name) {
			// Some package linked in registered a controller this binary
			// does not mean to run; say so rather than run it.
			log.Info("not running registered controller", "controller", name)
		}
	}

	// Informers are created lazily by the controllers' Register calls above,
	// so the factories start only now. The HTTP-01 metadata factory serves
	// ACME solvers only and is not started.
	base.SharedInformerFactory.Start(rootCtx.Done())
	base.KubeSharedInformerFactory.Start(rootCtx.Done())

	err = g.Wait()
	base.KubeSharedInformerFactory.Shutdown()
	base.SharedInformerFactory.Shutdown()
	// A controller stopped before its caches synced reports an error; after
	// SIGTERM that is just the shutdown.
	if err != nil && parent.Err() == nil {
		return err
	}
	log.Info("controllers stopped")
	return nil
}

// serveUntilDone serves srv on ln in g and shuts it down when ctx ends.
func serveUntilDone(ctx context.Context, g *errgroup.Group, srv *http.Server, ln net.Listener) {
	g.Go(func() error {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(shutdownCtx) //nolint:contextcheck // ctx is already done
	})
}
