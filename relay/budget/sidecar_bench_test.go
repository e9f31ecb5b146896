package budget

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"

	"github.com/mailfleet/mailfleet/ratelimit"
	"github.com/mailfleet/mailfleet/ratelimit/ratelimittest"
	"github.com/mailfleet/mailfleet/ratelimit/redistest"
)

// BenchmarkSidecar measures budget decisions as the relay sees them: through
// budget.Sidecar (with the relay's default timeout) to in-process sidecars,
// each with its own Redis client, all counting in one redis-server. With 3
// sidecars, calls rotate over three relay-side clients, as three relay pods.
// Accounts: a Zipf spread over 10,000 api_users plus one hot api_user that
// takes a fifth of all calls.
//
// rate=5000 offers a fixed 5,000 decisions a second whatever the answers
// take (an open loop, so a slow answer does not hold back the next call);
// rate=max runs 64 callers back to back. Reported: decisions/s, latency
// percentiles in ms from the call's start (p50_ms, p90_ms, p99_ms) and, for the
// fixed rate, from when it was due (p99_due_ms: includes any lag of the load
// generator itself), and decisions not answered in time (unavailable).
//
//	go test -run '^$' -bench BenchmarkSidecar -benchtime 20000x ./relay/budget
func BenchmarkSidecar(b *testing.B) {
	for _, sidecars := range []int{1, 3} {
		b.Run(fmt.Sprintf("sidecars=%d", sidecars), func(b *testing.B) {
			clients := startBenchFleet(b, sidecars)
			users := zipfUsers(1 << 16)
			b.Run("rate=5000", func(b *testing.B) { benchFixedRate(b, clients, users, 5000) })
			b.Run("rate=max", func(b *testing.B) { benchMax(b, clients, users, 64) })
		})
	}
}

// BenchmarkSidecarBaseline is the control for BenchmarkSidecar: the same
// calls through budget.Sidecar to a gRPC server that answers OK at once,
// without Redis. What BenchmarkSidecar adds to it is the sidecar's own cost;
// what it shows by itself is the loopback gRPC round trip and the
// machine's scheduling noise.
func BenchmarkSidecarBaseline(b *testing.B) {
	f := &fakeSidecar{answer: func(context.Context) (*rlsv3.RateLimitResponse, error) {
		return &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}, nil
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer()
	rlsv3.RegisterRateLimitServiceServer(g, f)
	go g.Serve(ln)
	b.Cleanup(g.Stop)
	clients := []*Sidecar{newTestSidecar(b, ln.Addr().String(), DefaultSidecarTimeout)}
	users := zipfUsers(1 << 16)
	b.Run("rate=5000", func(b *testing.B) { benchFixedRate(b, clients, users, 5000) })
	b.Run("rate=max", func(b *testing.B) { benchMax(b, clients, users, 64) })
}

func startBenchFleet(b *testing.B, n int) []*Sidecar {
	b.Helper()
	r := redistest.StartRedis(b)
	var clients []*Sidecar
	for range n {
		sc := ratelimittest.StartSidecar(b, r.Addr, ratelimit.Options{})
		clients = append(clients, newTestSidecar(b, sc.Addr, DefaultSidecarTimeout))
	}
	// Warm the connections (gRPC, Redis pools, the script cache).
	for i, c := range clients {
		if d := c.Take(context.Background(), Request{APIUser: "warm", Limit: 1 << 30}); d != Allow {
			b.Fatalf("sidecar %d: %v", i, d)
		}
	}
	return clients
}

// zipfUsers is a fixed sequence of api_users to draw from: a fifth of them
// the hot account, the rest Zipf-distributed over 10,000 accounts.
func zipfUsers(n int) []string {
	rng := rand.New(rand.NewPCG(1, 2))
	zipf := newZipf(rng, 1.1, 10000)
	out := make([]string, n)
	for i := range out {
		if rng.IntN(5) == 0 {
			out[i] = "hot"
			continue
		}
		out[i] = fmt.Sprintf("user-%d", zipf())
	}
	return out
}

// newZipf draws ranks 0..n-1 with P(k) proportional to 1/(k+1)^s by
// inverting the cumulative distribution.
func newZipf(rng *rand.Rand, s float64, n int) func() int {
	cdf := make([]float64, n)
	sum := 0.0
	for k := range n {
		sum += 1 / math.Pow(float64(k+1), s)
		cdf[k] = sum
	}
	return func() int {
		x := rng.Float64() * sum
		k, _ := slices.BinarySearch(cdf, x)
		return min(k, n-1)
	}
}

type benchStats struct {
	mu          sync.Mutex
	latency     []time.Duration
	due         []time.Duration
	unavailable atomic.Int64
	overLimit   atomic.Int64
}

func (s *benchStats) take(c *Sidecar, user string, dueAt time.Time) {
	start := time.Now()
	d := c.Take(context.Background(), Request{APIUser: user, Limit: 30000})
	end := time.Now()
	switch d {
	case Unavailable:
		s.unavailable.Add(1)
	case OverLimit:
		s.overLimit.Add(1)
	}
	s.mu.Lock()
	s.latency = append(s.latency, end.Sub(start))
	if !dueAt.IsZero() {
		s.due = append(s.due, end.Sub(dueAt))
	}
	s.mu.Unlock()
}

func benchFixedRate(b *testing.B, clients []*Sidecar, users []string, rate int) {
	stats := &benchStats{}
	interval := time.Second / time.Duration(rate)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		due := start.Add(time.Duration(i) * interval)
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		c, user := clients[i%len(clients)], users[i%len(users)]
		wg.Go(func() { stats.take(c, user, due) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	report(b, stats, elapsed)
}

func benchMax(b *testing.B, clients []*Sidecar, users []string, callers int) {
	stats := &benchStats{}
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range callers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				stats.take(clients[i%len(clients)], users[i%len(users)], time.Time{})
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	report(b, stats, elapsed)
}

func report(b *testing.B, s *benchStats, elapsed time.Duration) {
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "decisions/s")
	b.ReportMetric(percentile(s.latency, 0.50), "p50_ms")
	b.ReportMetric(percentile(s.latency, 0.90), "p90_ms")
	b.ReportMetric(percentile(s.latency, 0.99), "p99_ms")
	if len(s.due) > 0 {
		b.ReportMetric(percentile(s.due, 0.99), "p99_due_ms")
	}
	b.ReportMetric(float64(s.unavailable.Load()), "unavailable")
}

func percentile(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return float64(d[int(p*float64(len(d)-1))]) / float64(time.Millisecond)
}
