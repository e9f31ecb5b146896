package budget

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"

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
	clients := []Budget{newTestSidecar(b, serveFake(b, f), DefaultSidecarTimeout)}
	users := zipfUsers(1 << 16)
	b.Run("rate=5000", func(b *testing.B) { benchFixedRate(b, clients, users, 5000) })
	b.Run("rate=max", func(b *testing.B) { benchMax(b, clients, users, 64) })
}

// BenchmarkLeased is BenchmarkSidecar's load through budget.Leased (with
// the relay's default timeout): the same fleets of in-process sidecars on
// one redis-server, the same accounts, rates and figures, decided from
// leases.
//
// Each relay first serves every account of the sequence once, as a relay
// that has been running has served its accounts in the window before (a
// relay keeps one message's worth of each account it served, and takes a
// lease on the next window for it before the window ends). The hot account
// starts at one unit and its blocks grow during the run. Reported besides
// BenchmarkSidecar's figures: waited, the decisions that waited for a lease
// from the sidecar (a loopback round trip); over_limit, the 536s.
//
//	go test -run '^$' -bench 'BenchmarkLeased$|BenchmarkSidecar' -benchtime 20000x ./relay/budget
func BenchmarkLeased(b *testing.B) {
	for _, sidecars := range []int{1, 3} {
		b.Run(fmt.Sprintf("sidecars=%d", sidecars), func(b *testing.B) {
			var clients []Budget
			var leased []*Leased
			for _, addr := range startBenchSidecars(b, sidecars) {
				l := newTestLeased(b, addr, nil, LeasedOptions{SidecarOptions: SidecarOptions{Timeout: DefaultSidecarTimeout}})
				clients, leased = append(clients, l), append(leased, l)
			}
			users := zipfUsers(1 << 16)
			warmLeases(b, leased, users)
			waits := func() (n int64) {
				for _, l := range leased {
					n += l.waits.Load()
				}
				return n
			}
			for _, rate := range []struct {
				name string
				run  func(b *testing.B)
			}{
				{"rate=5000", func(b *testing.B) { benchFixedRate(b, clients, users, 5000) }},
				{"rate=max", func(b *testing.B) { benchMax(b, clients, users, 64) }},
			} {
				b.Run(rate.name, func(b *testing.B) {
					before := waits()
					rate.run(b)
					b.ReportMetric(float64(waits()-before), "waited")
				})
			}
		})
	}
}

// BenchmarkLeasedWindowBoundary is BenchmarkLeased's rate=5000 with one
// sidecar, centred on the end of a (one-minute) window: every lease ends
// there, and what the relay holds of the next window was taken shortly
// before it. It waits for a window to start (up to a minute) first.
//
//	go test -run '^$' -bench BenchmarkLeasedWindowBoundary -benchtime 20000x ./relay/budget
func BenchmarkLeasedWindowBoundary(b *testing.B) {
	const rate = 5000
	l := newTestLeased(b, startBenchSidecars(b, 1)[0], nil, LeasedOptions{SidecarOptions: SidecarOptions{Timeout: DefaultSidecarTimeout}})
	users := zipfUsers(1 << 16)
	// Warm up early in a window, as a relay running for a while has served
	// its accounts in the window before.
	redistest.WaitForTimeLeft(time.Minute, 40*time.Second)
	warmLeases(b, []*Leased{l}, users)
	end := time.Unix((redistest.WindowOf(time.Now(), time.Minute)+1)*60, 0)
	b.Run("rate=5000", func(b *testing.B) {
		if b.N > 1 {
			time.Sleep(time.Until(end.Add(-time.Duration(b.N) * time.Second / rate / 2)))
		}
		before := l.waits.Load()
		benchFixedRate(b, []Budget{l}, users, rate)
		b.ReportMetric(float64(l.waits.Load()-before), "waited")
	})
}

// warmLeases has every relay serve each account of users once, and again
// until each holds a lease on it: on a busy machine Redis can miss the
// sidecar's deadline, and then the sidecar's fallback decides without a
// lease.
func warmLeases(b *testing.B, relays []*Leased, users []string) {
	b.Helper()
	seen := map[string]bool{}
	var distinct []string
	for _, u := range users {
		if !seen[u] {
			seen[u] = true
			distinct = append(distinct, u)
		}
	}
	for attempt := 0; ; attempt++ {
		type job struct {
			relay *Leased
			user  string
		}
		var jobs []job
		for _, l := range relays {
			for _, u := range distinct {
				if _, ok := l.accountIfAny(u); !ok || !holdsLease(l, u) {
					jobs = append(jobs, job{l, u})
				}
			}
		}
		if len(jobs) == 0 {
			return
		}
		if attempt == 5 {
			b.Fatalf("%d accounts still without a lease after warming up five times", len(jobs))
		}
		if attempt > 0 {
			time.Sleep(ratelimit.DefaultCooldown + 100*time.Millisecond)
		}
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for i := int(next.Add(1)) - 1; i < len(jobs); i = int(next.Add(1)) - 1 {
					jobs[i].relay.Take(context.Background(), Request{APIUser: jobs[i].user, Limit: 30000})
				}
			})
		}
		wg.Wait()
		time.Sleep(100 * time.Millisecond) // the refills after the first lease
	}
}

func holdsLease(l *Leased, apiUser string) bool {
	a, _ := l.accountIfAny(apiUser)
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.usable(time.Now()) && a.cur.units > 0
}

func startBenchFleet(b *testing.B, n int) []Budget {
	b.Helper()
	var clients []Budget
	for _, addr := range startBenchSidecars(b, n) {
		clients = append(clients, newTestSidecar(b, addr, DefaultSidecarTimeout))
	}
	// Warm the connections (gRPC, Redis pools, the script cache).
	for i, c := range clients {
		if d := c.Take(context.Background(), Request{APIUser: "warm", Limit: 1 << 30}); d != Allow {
			b.Fatalf("sidecar %d: %v", i, d)
		}
	}
	return clients
}

// startBenchSidecars starts n in-process sidecars counting in one
// redis-server and returns their addresses.
func startBenchSidecars(b *testing.B, n int) []string {
	b.Helper()
	r := redistest.StartRedis(b)
	var addrs []string
	for range n {
		addrs = append(addrs, ratelimittest.StartSidecar(b, r.Addr, ratelimit.Options{Deadline: ratelimit.DefaultDeadline}).Addr)
	}
	return addrs
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

func (s *benchStats) take(c Budget, user string, dueAt time.Time) {
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

func benchFixedRate(b *testing.B, clients []Budget, users []string, rate int) {
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

func benchMax(b *testing.B, clients []Budget, users []string, callers int) {
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
	b.ReportMetric(float64(s.overLimit.Load()), "over_limit")
}

func percentile(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return float64(d[int(p*float64(len(d)-1))]) / float64(time.Millisecond)
}
