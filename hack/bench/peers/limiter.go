package main

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mailfleet/mailfleet/relay/budget"
)

// The limiter measurement: budget decisions at fixed offered rates, each
// limiter loaded in turn by the same open-loop generator, all counting in
// one redis-server. The accounts are those of a relay's day: one hot
// api_user with a fifth of the calls, the rest a Zipf spread over
// limiterUsers api_users (a few busy, most quiet), each with a budget no run
// reaches, so every answer is a yes and every limiter does the same work
// per call.
const (
	limiterUsers  = 10_000
	limiterBudget = 1_000_000_000
)

// decide is one budget decision; ok says the limiter answered in time
// with a yes.
type decide func(ctx context.Context, user string) (ok bool)

// limiter is one thing measured.
type limiter struct {
	name   string
	decide decide
}

// limiterRun is one limiter at one offered rate.
type limiterRun struct {
	name               string
	rate               int
	achieved           float64 // answered per second
	p50, p90, p99, max time.Duration
	failed             int // not answered in time, or not a yes
}

// measureLimiter starts Redis, mailfleet's sidecar, Envoy's ratelimit and a
// gRPC server that answers at once, then loads each limiter at each rate.
func measureLimiter(ctx context.Context, l *lab, o options, rep *report) error {
	rates, err := parseRates(o.limiterRates)
	if err != nil {
		return err
	}
	limiters, closeAll, err := startLimiters(ctx, l)
	if err != nil {
		return err
	}
	defer closeAll()
	for i, rate := range rates {
		for j := range limiters {
			lim := limiters[(i+j)%len(limiters)] // no limiter always first
			fixedRate(ctx, lim.decide, rate, time.Second)
			run := fixedRate(ctx, lim.decide, rate, o.limiterFor)
			run.name, run.rate = lim.name, rate
			rep.limiter = append(rep.limiter, run)
			log.Printf("limiter %-32s %6d/s offered: %8.0f/s answered, p50 %7.3f ms, p99 %7.3f ms, max %7.1f ms, %d failed",
				lim.name, rate, run.achieved, ms(run.p50), ms(run.p99), ms(run.max), run.failed)
		}
	}
	return nil
}

func parseRates(s string) ([]int, error) {
	sizes, err := parseSizes(s)
	if err != nil {
		return nil, fmt.Errorf("limiter rates %q: want decisions per second, comma-separated", s)
	}
	return sizes, nil
}

// startLimiters starts the servers and returns the limiters in the order
// the report lists them.
func startLimiters(ctx context.Context, l *lab) ([]limiter, func(), error) {
	if err := l.buildMailfleet(ctx); err != nil {
		return nil, nil, err
	}
	redisAddr, _, err := l.redis("limiter-redis")
	if err != nil {
		return nil, nil, err
	}
	sidecarAddr, _, err := l.sidecar("limiter-sidecar", redisAddr)
	if err != nil {
		return nil, nil, err
	}
	envoyAddr, err := l.envoyRatelimit(redisAddr)
	if err != nil {
		return nil, nil, err
	}
	noopAddr, stopNoop, err := serveNoop()
	if err != nil {
		return nil, nil, err
	}
	var closers []func()
	closeAll := func() {
		for _, c := range slices.Backward(closers) {
			c()
		}
	}
	closers = append(closers, stopNoop)
	rls := func(addr string) (decide, error) {
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		closers = append(closers, func() { conn.Close() })
		return rlsDecide(rlsv3.NewRateLimitServiceClient(conn)), nil
	}
	quiet := slog.New(slog.DiscardHandler)
	perMessage, err := budget.NewSidecar(budget.SidecarOptions{Address: sidecarAddr, Log: quiet})
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	closers = append(closers, func() { perMessage.Close() })
	leased, err := budget.NewLeased(budget.LeasedOptions{SidecarOptions: budget.SidecarOptions{Address: sidecarAddr, Log: quiet}})
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	closers = append(closers, func() { leased.Close() })
	out := []limiter{
		{"Envoy ratelimit (RLS)", nil},
		{"mailfleet sidecar (RLS)", nil},
		{"mailfleet relay, per message", budgetDecide(perMessage)},
		{"mailfleet relay, leases", budgetDecide(leased)},
		{"no-op gRPC server (RLS)", nil},
	}
	for i, addr := range map[int]string{0: envoyAddr, 1: sidecarAddr, 4: noopAddr} {
		if out[i].decide, err = rls(addr); err != nil {
			closeAll()
			return nil, nil, err
		}
	}
	return out, closeAll, nil
}

// rlsRequest is what the relay's sidecar client asks (budget.Sidecar): the
// account as a descriptor entry, its budget as the descriptor's limit.
func rlsRequest(user string) *rlsv3.RateLimitRequest {
	return &rlsv3.RateLimitRequest{
		Domain:     budget.SidecarDomain,
		HitsAddend: 1,
		Descriptors: []*ratelimitv3.RateLimitDescriptor{{
			Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "api_user", Value: user}},
			Limit:   &ratelimitv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: limiterBudget, Unit: typev3.RateLimitUnit_MINUTE},
		}},
	}
}

func rlsDecide(c rlsv3.RateLimitServiceClient) decide {
	return func(ctx context.Context, user string) bool {
		resp, err := c.ShouldRateLimit(ctx, rlsRequest(user))
		return err == nil && resp.GetOverallCode() == rlsv3.RateLimitResponse_OK
	}
}

func budgetDecide(b budget.Budget) decide {
	return func(ctx context.Context, user string) bool {
		return b.Take(ctx, budget.Request{APIUser: user, Limit: limiterBudget}) == budget.Allow
	}
}

// fixedRate offers rate decisions a second for d, each on its own goroutine
// when it is due (an open loop: a slow answer does not hold back the next
// call), and times each from its start.
func fixedRate(ctx context.Context, dec decide, rate int, d time.Duration) limiterRun {
	n := int(float64(rate) * d.Seconds())
	lat := make([]time.Duration, n)
	var failed atomic.Int64
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	users := accounts()
	start := time.Now()
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		user := users()
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			t := time.Now()
			if !dec(cctx, user) {
				failed.Add(1)
			}
			lat[i] = time.Since(t)
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	return limiterRun{achieved: float64(n) / elapsed.Seconds(), p50: q(0.5), p90: q(0.9), p99: q(0.99), max: lat[len(lat)-1], failed: int(failed.Load())}
}

// accounts returns the api_user of each next call: "hot" a fifth of the
// time, else a Zipf draw over limiterUsers names.
func accounts() func() string {
	r := rand.New(rand.NewPCG(1, 2))
	z := rand.NewZipf(r, 1.1, 1, limiterUsers-1)
	return func() string {
		if r.IntN(5) == 0 {
			return "hot"
		}
		return "user-" + strconv.FormatUint(z.Uint64(), 10)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

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

// sidecar starts `mailfleet ratelimit` counting in redisAddr, and returns
// its address and process id.
func (l *lab) sidecar(name, redisAddr string) (string, int, error) {
	port, err := freePort()
	if err != nil {
		return "", 0, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd, _, err := l.start(name, l.bin, "ratelimit", "--listen", addr,
		"--metrics-address", "127.0.0.1:0", "--redis-address", redisAddr, "--scope", "bench/relay")
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
// counts each api_user of the relay's domain on its own and takes the limit
// from the request, as mailfleet's sidecar does.
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
	// REDIS_PIPELINE_WINDOW: its documentation's setting "for optimal
	// performance" (off by default).
	cmd := []string{"env", "USE_STATSD=false", "LOG_LEVEL=warn", "REDIS_SOCKET_TYPE=tcp", "REDIS_URL=" + redisAddr,
		"REDIS_PIPELINE_WINDOW=150us",
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

// noop answers every ShouldRateLimit with OK at once: the floor of one
// loopback gRPC round trip.
type noop struct {
	rlsv3.UnimplementedRateLimitServiceServer
}

func (noop) ShouldRateLimit(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	return &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}, nil
}

func serveNoop() (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := grpc.NewServer()
	rlsv3.RegisterRateLimitServiceServer(srv, noop{})
	go srv.Serve(ln)
	return ln.Addr().String(), srv.Stop, nil
}

func (r *report) writeLimiter(b *strings.Builder) {
	var rates []int
	var names []string
	for _, x := range r.limiter {
		if !slices.Contains(rates, x.rate) {
			rates = append(rates, x.rate)
		}
		if !slices.Contains(names, x.name) {
			names = append(names, x.name)
		}
	}
	slices.Sort(rates)
	find := func(name string, rate int) (limiterRun, bool) {
		i := slices.IndexFunc(r.limiter, func(x limiterRun) bool { return x.name == name && x.rate == rate })
		if i < 0 {
			return limiterRun{}, false
		}
		return r.limiter[i], true
	}
	fmt.Fprintf(b, "## Budget decisions\n\n%s\n\n", limiterText)
	fmt.Fprintf(b, "Latency p50 / p90 / p99 in ms (decisions answered per second; any not answered in time, or not a yes, after a +), %s at each offered rate:\n\n| limiter |", r.opts.limiterFor)
	for _, rate := range rates {
		fmt.Fprintf(b, " %d/s |", rate)
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|", len(rates)) + "\n")
	for _, name := range names {
		fmt.Fprintf(b, "| %s |", name)
		for _, rate := range rates {
			x, _ := find(name, rate)
			failed := ""
			if x.failed > 0 {
				failed = fmt.Sprintf(" +%d", x.failed)
			}
			fmt.Fprintf(b, " %.3f / %.3f / %.3f (%.0f%s) |", ms(x.p50), ms(x.p90), ms(x.p99), x.achieved, failed)
		}
		b.WriteString("\n")
	}
	envoy := names[0]
	fmt.Fprintf(b, "\np99 of each against %s's:\n\n| limiter |", envoy)
	for _, rate := range rates {
		fmt.Fprintf(b, " %d/s |", rate)
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|", len(rates)) + "\n")
	for _, name := range names[1:] {
		fmt.Fprintf(b, "| %s / Envoy |", name)
		for _, rate := range rates {
			x, _ := find(name, rate)
			e, _ := find(envoy, rate)
			// Three significant digits: a lease's p99 is a thousandth of
			// a saturated limiter's.
			fmt.Fprintf(b, " %.3g× |", float64(x.p99)/float64(e.p99))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

const limiterText = `Every limiter counts in one redis-server (no persistence) and is loaded in turn by the
same open-loop generator in this harness's process: each decision starts when it is due, on
its own goroutine, whatever the earlier ones take; one second of warm-up at each rate is not
counted. The accounts: one hot api_user with a fifth of the calls, the rest a Zipf spread over
10,000 api_users (a few busy, most quiet), each with a budget no run reaches, so every answer
is a yes and each limiter does the same work per call.

- **Envoy ratelimit (RLS)**: Envoy's rate limit service (` + "`service_cmd`" + `, built from the Go module
  proxy by hack/install-bench-deps.sh), a per-minute limit for each api_user of the relay's
  domain, asked over gRPC with the request the relay's sidecar client sends; Redis writes
  buffered for 150 µs (` + "`REDIS_PIPELINE_WINDOW`" + `, its documentation's setting for throughput).
- **mailfleet sidecar (RLS)**: ` + "`mailfleet ratelimit`" + ` asked the same way.
- **mailfleet relay, per message**: the relay's sidecar client (` + "`budget.Sidecar`" + `,
  ` + "`budget.sidecar.leases: false`" + `), one call per message.
- **mailfleet relay, leases**: the relay's default (` + "`budget.Leased`" + `): messages decided in the
  process from leases it takes from the same sidecar. A quiet account's first message in a
  while (its lease given back after 2 s idle, or never taken) waits for one round trip; with
  this spread of accounts that is one or two decisions in a hundred, which is what its p99 shows.
- **no-op gRPC server (RLS)**: a server in this harness's process that answers yes at once, without
  Redis: the floor of one loopback round trip.`
