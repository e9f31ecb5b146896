package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mailfleet/mailfleet/relay/budget"
	"github.com/mailfleet/mailfleet/relay/certs"
	"github.com/mailfleet/mailfleet/relay/config"
	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/credentials/kubesource"
	"github.com/mailfleet/mailfleet/relay/dispatch"
	"github.com/mailfleet/mailfleet/relay/httpapi"
	"github.com/mailfleet/mailfleet/relay/ops"
	"github.com/mailfleet/mailfleet/relay/queueid"
	"github.com/mailfleet/mailfleet/relay/smtpd"
	"github.com/mailfleet/mailfleet/relay/submission"
)

func relayCommand() *cobra.Command {
	var path, hostname, metricsAddr string
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Run the SMTP submission relay",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			if hostname != "" {
				cfg.Hostname = hostname
			}
			if metricsAddr != "" {
				cfg.MetricsAddress = metricsAddr
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return runRelay(ctx, cfg, relayHooks{})
		},
	}
	cmd.Flags().StringVar(&path, "config", "/etc/mailfleet/relay.yaml", "relay configuration file (YAML or JSON)")
	cmd.Flags().StringVar(&hostname, "hostname", "", "hostname in the SMTP greeting (overrides the file)")
	cmd.Flags().StringVar(&metricsAddr, "metrics-address", "", "address for /metrics, /healthz and /readyz (overrides the file)")
	return cmd
}

// relayHooks let dev mode add to a relay run without a second copy of it.
type relayHooks struct {
	// started is called once every listener is bound.
	started func(relayListening)
}

// relayListening is where a started relay listens.
type relayListening struct {
	smtp    *smtpd.Server
	api     *httpapi.Server // nil when the HTTP API is off
	metrics net.Addr
}

// runRelay runs the relay until ctx ends, then drains.
func runRelay(ctx context.Context, cfg config.Config, hooks relayHooks) error {
	log, err := newLogger(cfg.LogLevel)
	if err != nil {
		return err
	}
	creds, credsReady, err := openCredentials(ctx, cfg, log)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	smtpCfg, err := smtpConfig(ctx, cfg, reg, log)
	if err != nil {
		return err
	}
	// /healthz and /readyz answer from the start: while the queue is out of
	// reach the relay is alive but not ready, so kubelet neither restarts it
	// nor sends it clients.
	var ready atomic.Pointer[func() bool]
	isReady := func() bool {
		f := ready.Load()
		return f != nil && (*f)()
	}
	// /readyz as a series, for the RelayNotReady alert: kubelet's view
	// is not in Prometheus without kube-state-metrics.
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "mailfleet_relay_ready",
		Help: "1 when the relay is ready (listening, credentials loaded, queue reachable, not draining), else 0.",
	}, func() float64 {
		if isReady() {
			return 1
		}
		return 0
	}))
	opsSrv, err := serveRelayOps(ctx, cfg, reg, isReady, log)
	if err != nil {
		return err
	}
	defer opsSrv.Close()
	q, err := waitForQueue(ctx, cfg, reg, log)
	if err != nil {
		return err
	}
	if q == nil {
		log.Info("relay stopped before its queue was reachable")
		return nil
	}
	// Closed last, after the sessions drained and the workers stopped.
	defer q.Close()
	ids, err := queueid.New(cfg.Node)
	if err != nil {
		return err
	}
	budgets, closeBudget, err := openBudget(cfg.Budget, reg, log)
	if err != nil {
		return err
	}
	// Deferred before the server exists, so it runs after the drain: the
	// sessions finishing during it still ask the budget.
	defer closeBudget()
	transport, destination, closeTransport, err := openTransport(ctx, cfg, q, reg, log)
	if err != nil {
		return err
	}
	defer closeTransport()
	evs, err := openEvents(ctx, cfg, q, reg, log)
	if err != nil {
		return err
	}
	// Closed after the workers stopped, before the queue: the events of
	// the last deliveries are written then.
	defer closeEvents(evs)
	verifier := credentials.NewVerifier(creds)
	guard := openSuppressions(ctx, cfg, q, manualSuppressions{verifier}, reg, log)
	dispatcher, err := newDispatcher(cfg, q, transport, destination, ids, evs, asOptional[dispatch.Suppressions](guard), reg, log)
	if err != nil {
		return err
	}
	dispatchCtx, stopDispatch := context.WithCancel(ctx)
	defer stopDispatch()
	if err := startWebhooks(dispatchCtx, cfg, q, creds, reg, log); err != nil {
		return err
	}
	dispatched := make(chan struct{})
	go func() {
		defer close(dispatched)
		dispatcher.Run(dispatchCtx)
	}()
	backend, err := submission.New(submission.Config{
		AuthFailureLimit:  cfg.Limits.AuthFailureLimit,
		AuthFailureWindow: cfg.Limits.AuthFailureWindow.Duration,
		DropSuppressed:    cfg.Suppression.OnSubmission == config.SuppressionDrop,
	}, submission.Deps{
		Auth:    verifier,
		Budget:  budgets,
		Spool:   q,
		IDs:     ids,
		Metrics: submission.NewMetrics(reg),
		Events:  evs,
		// Typed nil would not be nil: no list is no interface value.
		Suppressions: asOptional[submission.Suppressions](guard),
	})
	if err != nil {
		return err
	}
	srv, err := smtpd.New(smtpCfg, smtpd.Deps{Backend: backend, Metrics: smtpd.NewMetrics(reg), Log: log})
	if err != nil {
		return err
	}
	api, err := startAPI(cfg, smtpCfg, backend, asOptional[httpapi.Suppressions](guard), reg, log)
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		stopAPI(context.Background(), api)
		return err
	}
	serving := func() bool { return srv.Ready() && credsReady() && q.Ready() }
	ready.Store(&serving)
	log.Info("relay started", "hostname", smtpCfg.Hostname, "probes", opsSrv.Addr().String(), "metrics", opsSrv.MetricsAddr().String())
	if hooks.started != nil {
		hooks.started(relayListening{smtp: srv, api: api, metrics: opsSrv.MetricsAddr()})
	}
	<-ctx.Done()
	log.Info("shutting down", "grace_period", cfg.DrainGracePeriod.Duration)
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.DrainGracePeriod.Duration)
	defer cancel()
	// Both doors drain together: each request or session under way may
	// still queue its message.
	apiStopped := make(chan error, 1)
	go func() { apiStopped <- stopAPI(drainCtx, api) }()
	err = errors.Join(srv.Shutdown(drainCtx), <-apiStopped)
	// The workers took no new message since ctx ended; the deliveries in
	// progress get what is left of the grace period. One still running then
	// is handed out again once the queue's AckWait passes.
	select {
	case <-dispatched:
	case <-drainCtx.Done():
		log.Warn("deliveries still in progress at the end of the grace period; they will be retried")
	}
	log.Info("relay stopped")
	return err
}

// startAPI serves the HTTP send API when the config turns it on, with the
// SMTP listeners' certificate and the same submission policy.
func startAPI(cfg config.Config, smtpCfg smtpd.Config, policy httpapi.Policy, sup httpapi.Suppressions, reg prometheus.Registerer, log *slog.Logger) (*httpapi.Server, error) {
	if !cfg.HTTPAPI.Serves() {
		return nil, nil
	}
	trusted, err := cfg.HTTPAPI.TrustedProxyPrefixes() // validated when loaded
	if err != nil {
		return nil, fmt.Errorf("httpAPI: %w", err)
	}
	api, err := httpapi.New(httpapi.Options{
		Addr:            cfg.HTTPAPI.Address,
		TrustedProxies:  trusted,
		Suppressions:    sup,
		TLS:             smtpCfg.TLS,
		Policy:          policy,
		Hostname:        smtpCfg.Hostname,
		MaxMessageBytes: cfg.Limits.MaxMessageBytes,
		Metrics:         httpapi.NewMetrics(reg),
		Log:             log.With("listener", "http"),
	})
	if err != nil {
		return nil, err
	}
	if err := api.Start(); err != nil {
		return nil, err
	}
	log.Info("http api listening", "address", api.Addr().String())
	return api, nil
}

func stopAPI(ctx context.Context, api *httpapi.Server) error {
	if api == nil {
		return nil
	}
	return api.Shutdown(ctx)
}

func smtpConfig(ctx context.Context, cfg config.Config, reg prometheus.Registerer, log *slog.Logger) (smtpd.Config, error) {
	l := cfg.Limits
	out := smtpd.Config{
		Hostname:                cfg.Hostname,
		Banner:                  cfg.Banner,
		MaxMessageBytes:         l.MaxMessageBytes,
		MaxRecipients:           l.MaxRecipients,
		MaxLineLength:           l.MaxLineLength,
		MaxConnections:          l.MaxConnections,
		MaxConnectionsPerClient: l.MaxConnectionsPerClient,
		ConnectionRatePerClient: l.ConnectionRatePerClient,
		CommandTimeout:          l.CommandTimeout.Duration,
		DataTimeout:             l.DataTimeout.Duration,
	}
	for _, lc := range cfg.Listeners {
		// Validated when the config was loaded.
		trusted, err := lc.TrustedProxyPrefixes()
		if err != nil {
			return smtpd.Config{}, fmt.Errorf("listener %s: %w", lc.Name, err)
		}
		out.Listeners = append(out.Listeners, smtpd.Listener{
			Name: lc.Name, Addr: lc.Address, ImplicitTLS: lc.ImplicitTLS, AllowAuthWithoutTLS: !lc.AuthNeedsTLS(),
			ProxyProtocol: lc.ProxyProtocol, TrustedProxies: trusted,
		})
	}
	if cfg.TLS != nil {
		reloader, err := certs.NewReloader(cfg.TLS.CertFile, cfg.TLS.KeyFile, log)
		if err != nil {
			return smtpd.Config{}, err
		}
		go reloader.Run(ctx)
		out.TLS = certs.ServerTLSConfig(reloader.GetCertificate)
		// Read at each scrape, so a reloaded certificate shows at once:
		// the alert on expiry watches what clients are served, whoever
		// issued it.
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mailfleet_relay_certificate_expiry_timestamp_seconds",
			Help: "When the certificate the relay serves expires (Unix time).",
		}, func() float64 { return float64(reloader.Leaf().NotAfter.Unix()) }))
	}
	return out, nil
}

// openBudget returns where accounts' budgets are counted: the rate-limit
// sidecar when the config names one (decided from leases unless
// budget.sidecar.leases is false), else an in-process window (dev mode, a
// single relay).
func openBudget(cfg config.Budget, reg prometheus.Registerer, log *slog.Logger) (budget.Budget, func(), error) {
	if cfg.Sidecar == nil {
		log.Info("budgets are counted in this process only", "podShare", cfg.PodShare)
		return budget.PodShare{Budget: budget.NewFixedWindow(), Pods: cfg.PodShare}, func() {}, nil
	}
	opts := budget.SidecarOptions{Address: cfg.Sidecar.Address, Timeout: cfg.Sidecar.Timeout.Duration, Log: log}
	counted := func(decisions string) {
		log.Info("budgets are counted by the rate-limit sidecar", "address", opts.Address, "timeout", opts.Timeout, "decisions", decisions)
	}
	if !cfg.Sidecar.UsesLeases() {
		s, err := budget.NewSidecar(opts)
		if err != nil {
			return nil, nil, err
		}
		counted("per_message")
		return s, func() { s.Close() }, nil
	}
	l, err := budget.NewLeased(budget.LeasedOptions{SidecarOptions: opts, Registerer: reg,
		LeaseLife: cfg.Sidecar.LeaseLife.Duration, IdleReturn: cfg.Sidecar.IdleReturn.Duration})
	if err != nil {
		return nil, nil, err
	}
	counted("leases")
	// Close gives back what the relay holds, for the other relays.
	return l, func() { l.Close() }, nil
}

// openCredentials starts the configured credentials source: the file, or the
// operator's shards in the relay's namespace. The returned func reports
// whether it has loaded, for /readyz.
func openCredentials(ctx context.Context, cfg config.Config, log *slog.Logger) (credentials.Source, func() bool, error) {
	if cfg.CredentialsSecrets == nil {
		file, err := credentials.OpenFile(cfg.CredentialsFile, log)
		if err != nil {
			return nil, nil, err
		}
		go file.Run(ctx)
		return file, func() bool { return true }, nil
	}
	client, err := kubeClient()
	if err != nil {
		return nil, nil, err
	}
	src := kubesource.NewSecrets(client, cfg.CredentialsSecrets.Namespace, cfg.CredentialsSecrets.Relay, log)
	go func() {
		if err := src.Run(ctx); err != nil {
			log.Error("credentials watch stopped", "err", err)
		}
	}()
	return src, src.Synced, nil
}

// kubeClient is the relay's Kubernetes client: in a pod, the service
// account's in-cluster config; elsewhere $KUBECONFIG (tests run the relay
// against envtest that way).
func kubeClient() (kubernetes.Interface, error) {
	restCfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return client, nil
}

// serveOps serves /metrics, /healthz and /readyz on addr, in clear.
func serveOps(addr string, reg *prometheus.Registry, ready func() bool, log *slog.Logger) (*ops.Server, error) {
	return ops.Serve(ops.Options{Addr: addr, Registry: reg, Ready: ready, Log: log})
}

// serveRelayOps serves the probes on metricsAddress and /metrics where and
// as the config's metrics section says.
func serveRelayOps(ctx context.Context, cfg config.Config, reg *prometheus.Registry, ready func() bool, log *slog.Logger) (*ops.Server, error) {
	o := ops.Options{Addr: cfg.MetricsAddress, Registry: reg, Ready: ready, Log: log}
	if m := cfg.Metrics; m != nil {
		o.BearerTokenFile = m.BearerTokenFile
		if m.SeparateAddress(cfg.MetricsAddress) {
			o.MetricsAddr = m.Address
		}
		if m.TLS != nil {
			var err error
			if o.TLS, err = metricsTLS(ctx, cfg, log); err != nil {
				return nil, err
			}
		}
	}
	return ops.Serve(o)
}

// metricsTLS serves the metrics section's certificate files, or the
// relay's when it names none, reloading them as they change.
func metricsTLS(ctx context.Context, cfg config.Config, log *slog.Logger) (*tls.Config, error) {
	files := *cfg.Metrics.TLS
	if files.CertFile == "" && cfg.TLS != nil {
		files = *cfg.TLS
	}
	reloader, err := certs.NewReloader(files.CertFile, files.KeyFile, log)
	if err != nil {
		return nil, fmt.Errorf("metrics TLS: %w", err)
	}
	go reloader.Run(ctx)
	return certs.ServerTLSConfig(reloader.GetCertificate), nil
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
