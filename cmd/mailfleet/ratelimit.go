package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/ratelimit"
	"github.com/mailfleet/mailfleet/relay/config"
)

// replicasEnv lets the pod spec pass the fleet's size without templating
// flags; --replicas wins when both are given.
const replicasEnv = "MAILFLEET_RATELIMIT_REPLICAS"

type ratelimitOptions struct {
	listen, metricsAddr, logLevel          string
	redisAddr, redisUser, redisPassFile    string
	redisTLS                               bool
	redisCAFile                            string
	failureMode                            string
	deadline, cooldown, window, stopGrace  time.Duration
	defaultLimit                           int64
	replicas                               int
	credentialsFile, secretsNS, secretsFor string
	scope                                  string
}

func ratelimitCommand() *cobra.Command {
	var o ratelimitOptions
	cmd := &cobra.Command{
		Use:   "ratelimit",
		Short: "Run the fleet-wide budget sidecar (Envoy rate limit service on Redis)",
		Long: `ratelimit serves envoy.service.ratelimit.v3.RateLimitService over gRPC, and beside
it the relay's lease service: the relay takes blocks of each account's budget
from the same counters over loopback and decides messages from them itself. An
HTTP gateway (Envoy, Istio, Contour) may ask the rate limit service, so API and
SMTP calls share one budget per api_user. Counters live in Redis, one per
api_user per calendar minute.

When Redis fails or misses --deadline, --failure-mode decides: allow answers from
a per-pod limiter at limit/replicas; deny answers gRPC UNAVAILABLE, which the
relay turns into 451 4.7.1 (try again later).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("replicas") {
				if err := replicasFromEnv(&o.replicas); err != nil {
					return err
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return runRatelimit(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:8081", "gRPC address (loopback for the relay alone; the pod IP to serve a gateway too)")
	f.StringVar(&o.metricsAddr, "metrics-address", ":9091", "address for /metrics, /healthz and /readyz")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.redisAddr, "redis-address", "", "Redis host:port (required)")
	f.StringVar(&o.redisUser, "redis-username", "", "Redis ACL user name")
	f.StringVar(&o.redisPassFile, "redis-password-file", "", "file holding the Redis password (a mounted Secret)")
	f.BoolVar(&o.redisTLS, "redis-tls", false, "connect to Redis over TLS")
	f.StringVar(&o.redisCAFile, "redis-ca-file", "", "CA bundle for Redis's certificate (implies --redis-tls; default: the system's roots)")
	f.StringVar(&o.failureMode, "failure-mode", string(ratelimit.FailureAllow), "when Redis fails: allow (per-pod fallback at limit/replicas) or deny (451 4.7.1)")
	f.DurationVar(&o.deadline, "deadline", ratelimit.DefaultDeadline, "time Redis gets for one decision before the failure mode applies")
	f.DurationVar(&o.cooldown, "redis-cooldown", ratelimit.DefaultCooldown, "after repeated Redis failures, how long decisions skip Redis")
	f.Int64Var(&o.defaultLimit, "default-limit", wire.DefaultBudgetPerMinute, "calls per minute for an account whose request carries no limit and that the credentials do not know")
	f.IntVar(&o.replicas, "replicas", 1, "relay pods sharing the budget, for the fallback's share (or $"+replicasEnv+")")
	f.StringVar(&o.credentialsFile, "credentials-file", "", "optional: accounts' budgets from a relay credentials file, for callers that send no limit")
	f.StringVar(&o.secretsNS, "credentials-secrets-namespace", "", "optional: accounts' budgets from the operator's shards in this namespace (with --credentials-secrets-relay)")
	f.StringVar(&o.secretsFor, "credentials-secrets-relay", "", "the SmtpRelay whose shards to read")
	f.StringVar(&o.scope, "scope", "", "the fleet whose budgets this sidecar counts (the relay's namespace/name): fleets sharing one Redis never share a counter")
	f.DurationVar(&o.window, "window", ratelimit.DefaultWindow, "counting window (tests only)")
	f.DurationVar(&o.stopGrace, "stop-grace-period", 5*time.Second, "after SIGTERM, how long in-flight calls may finish")
	_ = f.MarkHidden("window")
	return cmd
}

func replicasFromEnv(replicas *int) error {
	v := os.Getenv(replicasEnv)
	if v == "" {
		return nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("$%s=%q: %w", replicasEnv, v, err)
	}
	*replicas = n
	return nil
}

// sidecarGCPercent is the sidecar's GOGC unless $GOGC says otherwise. Its
// live heap is a few megabytes while every decision allocates about 12 KB
// (mostly gRPC), so at the default of 100 it collects many times a second,
// and each cycle takes a quarter of the CPU for its marking. On the 2-core
// project machine, a loopback gRPC decision at 5,000/s had a p99 of ~5.7 ms
// at GOGC=100, ~2.6-3.2 ms at 400 and ~2.3 ms at 800
// (BenchmarkSidecarBaseline); 400 costs a heap of some tens of megabytes.
const sidecarGCPercent = 400

// runRatelimit serves until ctx ends, then stops gracefully.
func runRatelimit(ctx context.Context, o ratelimitOptions) error {
	log, err := newLogger(o.logLevel)
	if err != nil {
		return err
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(sidecarGCPercent)
	}
	ratelimit.LogRedisClientTo(log)
	redisOpts, err := o.redisOptions()
	if err != nil {
		return err
	}
	client := ratelimit.NewRedisClient(redisOpts)
	defer client.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	serverOpts, ready, err := o.serverOptions(ctx, reg, log)
	if err != nil {
		return err
	}
	srv, err := ratelimit.NewServer(client, serverOpts)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen gRPC on %s: %w", o.listen, err)
	}
	g := ratelimit.NewGRPCServer(srv)
	served := make(chan error, 1)
	go func() { served <- g.Serve(ln) }()
	ops, err := serveOps(o.metricsAddr, reg, ready, log)
	if err != nil {
		g.Stop()
		return err
	}
	defer ops.Close()
	log.Info("ratelimit started", "grpc", ln.Addr().String(), "metrics", ops.Addr().String(),
		"redis", o.redisAddr, "failure_mode", serverOpts.FailureMode, "deadline", serverOpts.Deadline,
		"replicas", serverOpts.Replicas, "window", serverOpts.Window)

	select {
	case err := <-served:
		return fmt.Errorf("gRPC server: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "grace_period", o.stopGrace)
	stopGracefully(g, o.stopGrace)
	log.Info("ratelimit stopped")
	return nil
}

// stopGracefully lets in-flight calls finish, but not forever: a relay
// holding its connection open would otherwise keep the pod alive until the
// kubelet kills it.
func stopGracefully(g interface {
	GracefulStop()
	Stop()
}, grace time.Duration) {
	done := make(chan struct{})
	go func() {
		g.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
		g.Stop()
		<-done
	}
}

func (o ratelimitOptions) serverOptions(ctx context.Context, reg prometheus.Registerer, log *slog.Logger) (ratelimit.Options, func() bool, error) {
	mode, err := ratelimit.ParseFailureMode(o.failureMode)
	if err != nil {
		return ratelimit.Options{}, nil, err
	}
	if o.deadline <= 0 || o.defaultLimit <= 0 {
		return ratelimit.Options{}, nil, errors.New("--deadline and --default-limit must be positive")
	}
	opts := ratelimit.Options{
		Window:       o.window,
		Deadline:     o.deadline,
		FailureMode:  mode,
		DefaultLimit: o.defaultLimit,
		Replicas:     o.replicas,
		Scope:        o.scope,
		Cooldown:     o.cooldown,
		Metrics:      ratelimit.NewMetrics(reg),
		Log:          log,
	}
	ready := func() bool { return true }
	if o.credentialsFile != "" || o.secretsNS != "" || o.secretsFor != "" {
		cfg := config.Config{CredentialsFile: o.credentialsFile}
		if o.secretsNS != "" || o.secretsFor != "" {
			if o.credentialsFile != "" || o.secretsNS == "" || o.secretsFor == "" {
				return ratelimit.Options{}, nil, errors.New("credentials: give --credentials-file, or both --credentials-secrets-namespace and --credentials-secrets-relay")
			}
			cfg.CredentialsSecrets = &config.CredentialsSecrets{Namespace: o.secretsNS, Relay: o.secretsFor}
		}
		src, synced, err := openCredentials(ctx, cfg, log)
		if err != nil {
			return ratelimit.Options{}, nil, err
		}
		opts.Limits, ready = src, synced
	}
	return opts, ready, nil
}

func (o ratelimitOptions) redisOptions() (ratelimit.RedisOptions, error) {
	if o.redisAddr == "" {
		return ratelimit.RedisOptions{}, errors.New("--redis-address is required")
	}
	out := ratelimit.RedisOptions{Address: o.redisAddr, Username: o.redisUser, Timeout: ratelimit.SocketTimeout(o.deadline)}
	if o.redisPassFile != "" {
		b, err := os.ReadFile(o.redisPassFile)
		if err != nil {
			return ratelimit.RedisOptions{}, fmt.Errorf("redis password: %w", err)
		}
		// A Secret created with `kubectl create secret --from-file` keeps
		// the file's final newline; the password does not have one.
		out.Password = strings.TrimRight(string(b), "\r\n")
	}
	if o.redisTLS || o.redisCAFile != "" {
		cfg, err := redisTLSConfig(o.redisAddr, o.redisCAFile)
		if err != nil {
			return ratelimit.RedisOptions{}, err
		}
		out.TLS = cfg
	}
	return out, nil
}

func redisTLSConfig(addr, caFile string) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--redis-address %q: %w", addr, err)
	}
	cfg := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("redis CA: %w", err)
	}
	cfg.RootCAs = x509.NewCertPool()
	if !cfg.RootCAs.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("redis CA %s: no PEM certificate in it", caFile)
	}
	return cfg, nil
}
