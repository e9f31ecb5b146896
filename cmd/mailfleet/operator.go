package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap/zapcore"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/mailfleet/mailfleet/controllers"
	"github.com/mailfleet/mailfleet/controllers/dnscheck"
	"github.com/mailfleet/mailfleet/controllers/render"
)

type operatorOptions struct {
	metricsAddr      string
	metricsSecure    bool
	metricsCertDir   string
	probeAddr        string
	pprofAddr        string
	leaderElect      bool
	leaderElectionNS string
	relayImage       string
	allowedImages    []string
	allowedIssuers   []string
	allowedHosts     []string
	logLevel         string
	shutdownTimeout  time.Duration
	domainKeyNS      string
	dnsServers       []string
	spfInclude       string
	externalDNS      []string
}

func operatorCommand() *cobra.Command {
	var o operatorOptions
	cmd := &cobra.Command{
		Use:   "operator",
		Short: "Run the controller manager for SmtpRelay, SmtpAccount, SmtpLabel and SmtpDomain",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runOperator(o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint")
	f.BoolVar(&o.metricsSecure, "metrics-secure", true, "serve metrics over HTTPS to clients whose bearer token the API server authenticates (TokenReview) and authorizes for GET /metrics (SubjectAccessReview); false serves plain HTTP to anyone")
	f.StringVar(&o.metricsCertDir, "metrics-cert-dir", "", "directory with tls.crt and tls.key for the metrics endpoint, reloaded when they change (default: a self-signed certificate made at start)")
	f.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	f.StringVar(&o.pprofAddr, "pprof-bind-address", "", "address of Go's /debug/pprof endpoints, plain HTTP and unauthenticated: bind it to loopback (default: off)")
	f.BoolVar(&o.leaderElect, "leader-elect", true, "elect a leader so only one replica reconciles")
	f.StringVar(&o.leaderElectionNS, "leader-election-namespace", "", "namespace of the leader election Lease (default: the pod's)")
	f.StringVar(&o.relayImage, "relay-image", os.Getenv("MAILFLEET_IMAGE"), "image of relay pods when an SmtpRelay sets none (default $MAILFLEET_IMAGE)")
	f.StringSliceVar(&o.allowedImages, "relay-allowed-images", nil, "images an SmtpRelay may name in spec.image besides --relay-image: exact references, or prefixes ending in /, : or @")
	f.StringSliceVar(&o.allowedIssuers, "relay-allowed-cluster-issuers", nil, "ClusterIssuers an SmtpRelay may name (default: any; set it where relays are written by other teams)")
	f.StringSliceVar(&o.allowedHosts, "relay-allowed-hostnames", nil, "hostnames relays may get certificates for: mail.example.com, or *.example.com (default: any)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info or error")
	f.DurationVar(&o.shutdownTimeout, "graceful-shutdown-timeout", 30*time.Second, "how long running reconciles may take to finish on shutdown")
	f.StringVar(&o.domainKeyNS, "domain-key-namespace", os.Getenv("POD_NAMESPACE"), "namespace that keeps the SmtpDomains' DKIM keys, one no tenant may write (default $POD_NAMESPACE, the operator's)")
	f.StringSliceVar(&o.dnsServers, "dns-servers", nil, "name servers (host:port) that sender domains' records are looked up on (default: those of /etc/resolv.conf)")
	f.StringSliceVar(&o.externalDNS, "external-dns-domains", nil, "domains (and their subdomains) whose SmtpDomains may ask the operator to write their DKIM records into an external-dns DNSEndpoint (default: none; external-dns publishes what a DNSEndpoint lists in every zone it manages)")
	f.StringVar(&o.spfInclude, "spf-include", "", "the domain whose SPF record lists the relays' addresses: an SmtpDomain's status suggests include:<it> (default: no SPF suggestion)")
	return cmd
}

func runOperator(o operatorOptions) error {
	var level zapcore.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("log level %q: %w", o.logLevel, err)
	}
	ctrl.SetLogger(lazyValues(zap.New(zap.Level(level))))
	if percent, set := operatorGCPercent(os.Getenv); set {
		debug.SetGCPercent(percent)
	}
	if o.relayImage == "" {
		return fmt.Errorf("--relay-image (or $MAILFLEET_IMAGE) is required: relay pods run the operator's image")
	}
	if err := checkMetricsCertDir(o); err != nil {
		return err
	}
	if err := checkPprofAddress(o.pprofAddr); err != nil {
		return err
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubernetes client config: %w", err)
	}
	mgr, err := ctrl.NewManager(cfg, managerOptions(o))
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	domains, err := o.domainOptions()
	if err != nil {
		return err
	}
	if err := controllers.Setup(mgr, o.renderOptions(), domains); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return fmt.Errorf("ready check: %w", err)
	}
	ctrl.Log.Info("starting operator", "version", version, "relayImage", o.relayImage)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	return nil
}

// checkPprofAddress refuses a pprof address other than loopback: the
// endpoints are unauthenticated and their goroutine and heap dumps hold
// whatever the operator holds, keys included.
func checkPprofAddress(addr string) error {
	if addr == "" || addr == "0" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--pprof-bind-address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--pprof-bind-address %q: bind it to loopback (127.0.0.1:6060), the endpoints are unauthenticated", addr)
	}
	return nil
}

// operatorGCPercent is the operator's GOGC: 50 unless $GOGC says
// otherwise. Most of its heap is caches that live as long as it does
// (every SmtpAccount, SmtpLabel and its own Secrets), and at Go's default
// of 100 the heap grows to twice that before a collection: the operator's
// peak RSS was 303 MiB at 10,000 accounts and 50,000 labels
// (hack/bench/operatorscale). At 50 it peaks at about one and a half
// times, for little CPU, since the caches barely change once filled.
func operatorGCPercent(getenv func(string) string) (percent int, set bool) {
	if getenv("GOGC") != "" {
		return 0, false // the runtime has read it
	}
	return 50, true
}

func managerOptions(o operatorOptions) ctrl.Options {
	shutdown := o.shutdownTimeout
	return ctrl.Options{
		Scheme:                        controllers.Scheme(),
		Metrics:                       metricsOptions(o),
		HealthProbeBindAddress:        o.probeAddr,
		PprofBindAddress:              o.pprofAddr,
		LeaderElection:                o.leaderElect,
		LeaderElectionID:              "mailfleet-operator.mailfleet.io",
		LeaderElectionNamespace:       o.leaderElectionNS,
		LeaderElectionReleaseOnCancel: true,
		GracefulShutdownTimeout:       &shutdown,
		Cache:                         controllers.CacheOptions(),
		MapperProvider:                controllers.MapperProvider,
	}
}

// metricsOptions serves /metrics over HTTPS behind the API server's own
// authentication and authorization unless --metrics-secure=false. Over
// plain HTTP anything that reaches the pod reads how the operator and its
// API server are doing (reconcile errors, API requests by status code,
// process details) and can make it render them as often as it likes; with
// this, the cluster's RBAC decides who reads them.
func metricsOptions(o operatorOptions) metricsserver.Options {
	opts := metricsserver.Options{BindAddress: o.metricsAddr}
	if !o.metricsSecure {
		return opts
	}
	opts.SecureServing = true
	// TokenReview for who the caller is, SubjectAccessReview for whether it
	// may GET /metrics: the operator's ServiceAccount needs create on both,
	// the scraper a ClusterRole with nonResourceURLs /metrics (the chart's
	// <release>-metrics-reader).
	opts.FilterProvider = filters.WithAuthenticationAndAuthorization
	// controller-runtime's default CertDir is under the temp directory and
	// falls back to a self-signed certificate made in memory when it holds
	// nothing, which is what the read-only root filesystem needs; a
	// directory given on the command line is checked at start instead.
	if o.metricsCertDir != "" {
		opts.CertDir = o.metricsCertDir
	}
	return opts
}

// checkMetricsCertDir refuses a --metrics-cert-dir without its key pair:
// controller-runtime would quietly serve a self-signed certificate instead,
// and the scraper that trusts the configured CA would fail with nothing in
// the operator's log to say why.
func checkMetricsCertDir(o operatorOptions) error {
	if o.metricsCertDir == "" {
		return nil
	}
	if !o.metricsSecure {
		return errors.New("--metrics-cert-dir needs --metrics-secure: plain HTTP uses no certificate")
	}
	for _, name := range []string{"tls.crt", "tls.key"} {
		path := filepath.Join(o.metricsCertDir, name)
		if _, err := os.Stat(path); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("--metrics-cert-dir %s has no %s (a kubernetes.io/tls Secret mounted there has both tls.crt and tls.key)", o.metricsCertDir, name)
			}
			return fmt.Errorf("metrics certificate %s: %w", path, err)
		}
	}
	return nil
}

// renderOptions are the administrator's choices for what relays may run and
// request. An empty issuer or hostname list allows anything, as the chart's
// values say; an empty image list allows only the relay image.
func (o operatorOptions) renderOptions() render.Options {
	orAny := func(list []string) []string {
		if len(list) == 0 {
			return nil
		}
		return list
	}
	return render.Options{
		Image:                 o.relayImage,
		AllowedImages:         orAny(o.allowedImages),
		AllowedClusterIssuers: orAny(o.allowedIssuers),
		AllowedHostnames:      orAny(o.allowedHosts),
	}
}

// domainOptions configure the SmtpDomain controller: keys in the
// operator's namespace, lookups on the configured or the system's name
// servers.
func (o operatorOptions) domainOptions() (controllers.DomainOptions, error) {
	if o.domainKeyNS == "" {
		return controllers.DomainOptions{}, fmt.Errorf("--domain-key-namespace (or $POD_NAMESPACE) is required: SmtpDomains' keys are kept in the operator's namespace")
	}
	opts := controllers.DomainOptions{KeyNamespace: o.domainKeyNS, SPFInclude: o.spfInclude, ExternalDNSDomains: o.externalDNS}
	if len(o.dnsServers) > 0 {
		opts.DNS = &dnscheck.Servers{Addrs: o.dnsServers}
		return opts, nil
	}
	system, err := dnscheck.System()
	if err != nil {
		return opts, fmt.Errorf("sender domains' lookups: %w (set --dns-servers)", err)
	}
	opts.DNS = system
	return opts, nil
}
