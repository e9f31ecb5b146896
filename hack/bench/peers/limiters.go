package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mailfleet/mailfleet/relay/budget"
)

// startLimiters starts the servers and returns the limiters not skipped,
// in the order the report lists them.
func startLimiters(ctx context.Context, l *lab, skip string) ([]limiter, func(), error) {
	var closers []func()
	closeAll := func() {
		for _, c := range slices.Backward(closers) {
			c()
		}
	}
	out, err := l.limiters(ctx, skip, &closers)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	if len(out) == 0 {
		return nil, nil, fmt.Errorf("every limiter skipped")
	}
	return out, closeAll, nil
}

func (l *lab) limiters(ctx context.Context, skip string, closers *[]func()) ([]limiter, error) {
	if err := l.buildMailfleet(ctx); err != nil {
		return nil, err
	}
	redisAddr, _, err := l.redis("limiter-redis")
	if err != nil {
		return nil, err
	}
	rls := func(addr string) (decide, error) {
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		*closers = append(*closers, func() { conn.Close() })
		return rlsDecide(rlsv3.NewRateLimitServiceClient(conn)), nil
	}
	var sidecarAddr, sidecarMetrics string // started once, for the first limiter that asks it
	sidecar := func() (string, error) {
		if sidecarAddr != "" {
			return sidecarAddr, nil
		}
		port, err := freePort()
		if err != nil {
			return "", err
		}
		sidecarMetrics = fmt.Sprintf("127.0.0.1:%d", port)
		addr, _, err := l.sidecar("limiter-sidecar", redisAddr, "--default-limit", strconv.Itoa(limiterBudget),
			"--metrics-address", sidecarMetrics)
		sidecarAddr = addr
		return addr, err
	}
	quiet := slog.New(slog.DiscardHandler)
	starters := []struct {
		id, name string
		start    func() (decide, error)
	}{
		{"envoy", "Envoy ratelimit (RLS)", func() (decide, error) {
			addr, err := l.envoyRatelimit(redisAddr)
			if err != nil {
				return nil, err
			}
			return rls(addr)
		}},
		{"sidecar", "mailfleet sidecar (RLS)", func() (decide, error) {
			addr, err := sidecar()
			if err != nil {
				return nil, err
			}
			return rls(addr)
		}},
		{"relay-sidecar", "mailfleet relay, per message", func() (decide, error) {
			addr, err := sidecar()
			if err != nil {
				return nil, err
			}
			b, err := budget.NewSidecar(budget.SidecarOptions{Address: addr, Log: quiet})
			if err != nil {
				return nil, err
			}
			*closers = append(*closers, func() { b.Close() })
			return budgetDecide(b), nil
		}},
		{"relay-leased", "mailfleet relay, leases", func() (decide, error) {
			addr, err := sidecar()
			if err != nil {
				return nil, err
			}
			b, err := budget.NewLeased(budget.LeasedOptions{SidecarOptions: budget.SidecarOptions{Address: addr, Log: quiet}})
			if err != nil {
				return nil, err
			}
			*closers = append(*closers, func() { b.Close() })
			return budgetDecide(b), nil
		}},
		{"noop", "no-op gRPC server (RLS)", func() (decide, error) {
			addr, err := l.noopRLS()
			if err != nil {
				return nil, err
			}
			return rls(addr)
		}},
	}
	var out []limiter
	for _, s := range starters {
		if want(skip, s.id) {
			continue
		}
		dec, err := s.start()
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", s.id, err)
		}
		lim := limiter{id: s.id, name: s.name, decide: dec}
		if sidecarMetrics != "" && s.id != "envoy" && s.id != "noop" {
			metrics := sidecarMetrics
			lim.fallbacks = func() float64 { return scrapeCounter(metrics, "mailfleet_ratelimit_fallback_total") }
		}
		out = append(out, lim)
	}
	return out, nil
}

// rlsRequest is one message of user against its budget per minute, asked
// as the relay's sidecar client (budget.Sidecar) asks: the account as a
// descriptor entry, its budget as the descriptor's limit override.
func rlsRequest(user string, budgetPerMinute uint32) *rlsv3.RateLimitRequest {
	return &rlsv3.RateLimitRequest{
		Domain:     budget.SidecarDomain,
		HitsAddend: 1,
		Descriptors: []*ratelimitv3.RateLimitDescriptor{{
			Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "api_user", Value: user}},
			Limit:   &ratelimitv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: budgetPerMinute, Unit: typev3.RateLimitUnit_MINUTE},
		}},
	}
}

func rlsDecide(c rlsv3.RateLimitServiceClient) decide {
	return func(ctx context.Context, user string, budgetPerMinute uint32) outcome {
		resp, err := c.ShouldRateLimit(ctx, rlsRequest(user, budgetPerMinute))
		switch {
		case err != nil:
			return failed
		case resp.GetOverallCode() == rlsv3.RateLimitResponse_OK:
			return allowed
		case resp.GetOverallCode() == rlsv3.RateLimitResponse_OVER_LIMIT:
			return denied
		}
		return failed
	}
}

func budgetDecide(b budget.Budget) decide {
	return func(ctx context.Context, user string, budgetPerMinute uint32) outcome {
		switch b.Take(ctx, budget.Request{APIUser: user, Limit: int(budgetPerMinute)}) {
		case budget.Allow:
			return allowed
		case budget.OverLimit:
			return denied
		}
		return failed
	}
}

// redis starts a redis-server on a free port without persistence, and
// returns its address and process id.
func (l *lab) redis(name string) (string, int, error) {
	port, err := freePort()
	if err != nil {
		return "", 0, err
	}
	cmd, _, err := l.start(name, "redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no")
	if err != nil {
		return "", 0, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	return addr, cmd.Process.Pid, waitListening(addr, 10*time.Second)
}

// sidecar starts `mailfleet ratelimit` counting in redisAddr, with any
// further flags, and returns its address and process id.
func (l *lab) sidecar(name, redisAddr string, flags ...string) (string, int, error) {
	port, err := freePort()
	if err != nil {
		return "", 0, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := append([]string{l.bin, "ratelimit", "--listen", addr,
		"--metrics-address", "127.0.0.1:0", "--redis-address", redisAddr, "--scope", "bench/relay"}, flags...)
	cmd, _, err := l.start(name, args...)
	if err != nil {
		return "", 0, err
	}
	if err := waitListening(addr, 20*time.Second); err != nil {
		return "", 0, fmt.Errorf("%w\n%s", err, l.logTail(name))
	}
	return addr, cmd.Process.Pid, nil
}

// envoyRatelimit starts Envoy's rate limit service (bin/envoy-ratelimit,
// from hack/install-bench-deps.sh) on redisAddr, with a configuration that
// counts each api_user of the relay's domain on its own, per minute, at
// the budget of limiterBudget unless the request overrides it.
func (l *lab) envoyRatelimit(redisAddr string) (string, error) {
	bin, err := filepath.Abs("bin/envoy-ratelimit/service_cmd")
	if err != nil || !fileExists(bin) {
		return "", fmt.Errorf("no %s: run hack/install-bench-deps.sh (make bench-peers does)", bin)
	}
	root := filepath.Join(l.dir, "envoy-runtime")
	conf := filepath.Join(root, "ratelimit", "config")
	if err := os.MkdirAll(conf, 0o755); err != nil {
		return "", err
	}
	yaml := fmt.Sprintf("domain: %s\ndescriptors:\n  - key: api_user\n    rate_limit: {unit: minute, requests_per_unit: %d}\n",
		budget.SidecarDomain, limiterBudget)
	if err := os.WriteFile(filepath.Join(conf, "config.yaml"), []byte(yaml), 0o644); err != nil {
		return "", err
	}
	ports := make([]int, 3)
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return "", err
		}
	}
	// USE_STATSD=false alone sends the stats to a logging sink that
	// writes every counter (six per account with a limit override) to
	// the log every 10 s, whatever LOG_LEVEL says; DISABLE_STATS keeps
	// counting them in memory and writes nothing. REDIS_PIPELINE_WINDOW
	// is left out: this version applies it to REDIS_TYPE=cluster only.
	cmd := []string{"env", "USE_STATSD=false", "DISABLE_STATS=true", "LOG_LEVEL=warn",
		"REDIS_SOCKET_TYPE=tcp", "REDIS_URL=" + redisAddr,
		"RUNTIME_ROOT=" + root, "RUNTIME_SUBDIRECTORY=ratelimit", "RUNTIME_WATCH_ROOT=false", "RUNTIME_IGNOREDOTFILES=true",
		"HOST=127.0.0.1", "GRPC_HOST=127.0.0.1", "DEBUG_HOST=127.0.0.1",
		"PORT=" + strconv.Itoa(ports[0]), "GRPC_PORT=" + strconv.Itoa(ports[1]), "DEBUG_PORT=" + strconv.Itoa(ports[2]), bin}
	if _, _, err := l.start("envoy-ratelimit", cmd...); err != nil {
		return "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[1])
	if err := waitListening(addr, 30*time.Second); err != nil {
		return "", fmt.Errorf("%w\n%s", err, l.logTail("envoy-ratelimit"))
	}
	return addr, nil
}

// noopEnv, when set in this program's environment, makes it serve the
// no-op rate limit service on the address it names instead of measuring.
const noopEnv = "MAILFLEET_PEERS_NOOP_RLS"

// noopRLS starts this program again as the no-op server, a process of its
// own as the other limiters are, and returns its address.
func (l *lab) noopRLS() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	port, err := freePort()
	if err != nil {
		return "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if _, _, err := l.start("noop-rls", "env", noopEnv+"="+addr, self); err != nil {
		return "", err
	}
	if err := waitListening(addr, 10*time.Second); err != nil {
		return "", fmt.Errorf("%w\n%s", err, l.logTail("noop-rls"))
	}
	return addr, nil
}

// noop answers every ShouldRateLimit with OK at once: the floor of one
// loopback gRPC round trip.
type noop struct {
	rlsv3.UnimplementedRateLimitServiceServer
}

func (noop) ShouldRateLimit(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	return &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}, nil
}

// serveNoop serves the no-op service on addr until the process is killed.
func serveNoop(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	rlsv3.RegisterRateLimitServiceServer(srv, noop{})
	return srv.Serve(ln)
}

// scrapeCounter reads one counter without labels from a Prometheus text
// endpoint; -1 when it cannot.
func scrapeCounter(addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}
