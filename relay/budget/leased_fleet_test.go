package budget

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/ratelimit"
	"github.com/mailfleet/mailfleet/ratelimit/ratelimittest"
	"github.com/mailfleet/mailfleet/ratelimit/redistest"
)

// fleetAccount is one account of the fleet test and the load on it.
type fleetAccount struct {
	name   string
	budget int
	// maxHits: each message has 1 to maxHits recipients.
	maxHits int
	// callers per relay (and through the gateway); pace > 0 makes a caller
	// send one message per pace instead of back to back.
	callers [3]int
	pace    [3]time.Duration
	gateway int
	// short is how far below the budget a window that refused messages
	// may end: 0 where every relay keeps asking to the end, so every unit
	// leased is used; where relays trickle, what they may still hold.
	short int
}

// fleetCall is one decision as the test saw it: its own count, outside the
// limiter, of what was admitted when.
type fleetCall struct {
	account    string
	hits       int
	decision   Decision
	start, end time.Time
}

// TestLeasedFleetAdmitsExactlyTheBudget is the leases' promise, checked by a
// count kept outside the limiter: three relays (each a Leased with its own
// in-process sidecar), and a gateway asking ShouldRateLimit of one of those
// sidecars, hammer a few accounts in one Redis through two consecutive
// windows. In every window no account is admitted more than its budget;
// where the load exceeded it, exactly the budget is admitted when every
// relay keeps asking, and all but what trickling relays may hold (1/16 of
// the budget each) when they do not.
//
// Each call is attributed to the window it began and ended in. The load
// stops at each window's middle, so a call in flight at a boundary took
// half a window; if one that was admitted did, the run is repeated with a
// window twice as long rather than guessing its window. So is a run in
// which a busy machine did not offer some account more than its budget in
// a window: it proves nothing about the budget's edge (though it still
// fails if anything was admitted over a budget); and so is a run in which
// Redis missed the sidecars' deadline and their fallback decided.
func TestLeasedFleetAdmitsExactlyTheBudget(t *testing.T) {
	accounts := []fleetAccount{
		{name: "even", budget: 400, maxHits: 1, callers: [3]int{6, 6, 6}, gateway: 2},
		{name: "multi", budget: 300, maxHits: 5, callers: [3]int{3, 3, 3}, short: 4},
		{name: "tiny", budget: 5, maxHits: 1, callers: [3]int{2, 2, 2}},
		// One relay hammers; two send one message every 20 ms, holding what
		// they leased in between.
		{name: "skewed", budget: 160, maxHits: 1, callers: [3]int{6, 1, 1},
			pace: [3]time.Duration{0, 20 * time.Millisecond, 20 * time.Millisecond}, short: 2 * 160 / leaseCapDivisor},
	}
	r := redistest.StartRedis(t)
	window := 2 * time.Second
	for attempt := 1; ; attempt++ {
		if fleetRun(t, r.Addr, window, accounts) || t.Failed() {
			return
		}
		if attempt == 3 {
			t.Fatal("three runs were inconclusive; the machine is too slow for this test")
		}
		window *= 2
		t.Logf("again with a %v window", window)
	}
}

// fleetRun runs the load through two windows and checks every window it
// touched; it reports false when the run was inconclusive.
func fleetRun(t *testing.T, redisAddr string, window time.Duration, accounts []fleetAccount) bool {
	t.Helper()
	var relays []*Leased
	var sidecars []*ratelimittest.Sidecar
	run := fmt.Sprintf("w%d-", window/time.Second)
	for range 3 {
		// A generous deadline: no decision may go to the fallback limiter
		// on a busy machine, or the count would not be Redis's.
		sc := ratelimittest.StartSidecar(t, redisAddr, ratelimit.Options{Window: window, Deadline: time.Second})
		sidecars = append(sidecars, sc)
		// A relay's timeout shortens the sidecar's Redis deadline: it must
		// be longer than that deadline.
		relays = append(relays, newTestLeased(t, sc.Addr, nil, LeasedOptions{
			SidecarOptions: SidecarOptions{Timeout: window},
			LeaseLife:      window / 8, IdleReturn: window / 8,
		}))
	}
	gateway := newTestSidecar(t, sidecars[0].Addr, window)
	for _, l := range relays {
		if d := l.Take(context.Background(), Request{APIUser: run + "warm", Limit: 1 << 20}); d != Allow {
			t.Fatalf("warm-up: %v", d)
		}
	}

	var mu sync.Mutex
	var calls []fleetCall
	var wg sync.WaitGroup
	var stop atomic.Pointer[time.Time]
	start := redistest.WaitWindowStart(window)
	first := redistest.WindowOf(start, window)
	for phase := range 2 {
		stopAt := start.Add(time.Duration(phase)*window + window/2)
		stop.Store(&stopAt)
		if phase == 1 {
			time.Sleep(time.Until(start.Add(window)))
		}
		for _, acct := range accounts {
			for i, l := range relays {
				for range acct.callers[i] {
					wg.Go(func() {
						mine := fleetCaller(l, nil, run, acct, acct.pace[i], *stop.Load())
						mu.Lock()
						calls = append(calls, mine...)
						mu.Unlock()
					})
				}
			}
			for range acct.gateway {
				wg.Go(func() {
					mine := fleetCaller(nil, gateway, run, acct, 0, *stop.Load())
					mu.Lock()
					calls = append(calls, mine...)
					mu.Unlock()
				})
			}
		}
		time.Sleep(time.Until(stopAt))
	}
	wg.Wait()

	for i, sc := range sidecars {
		if n := sc.Metric(t, "mailfleet_ratelimit_fallback_total"); n != 0 {
			// Redis missed a deadline on a busy machine.
			t.Logf("sidecar %d used its fallback %v times; the count is not Redis's", i, n)
			return false
		}
	}
	var leaseCalls float64
	for _, sc := range sidecars {
		leaseCalls += sc.Metric(t, "mailfleet_ratelimit_lease_calls_total")
	}
	t.Logf("%d decisions, %v lease calls to the sidecars", len(calls), leaseCalls)
	return checkFleet(t, calls, accounts, first, window)
}

// fleetCaller sends acct's messages through one relay (or the gateway)
// until stopAt, and keeps what it saw.
func fleetCaller(l *Leased, gateway *Sidecar, run string, acct fleetAccount, pace time.Duration, stopAt time.Time) []fleetCall {
	var mine []fleetCall
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for time.Now().Before(stopAt) {
		req := Request{APIUser: run + acct.name, Limit: acct.budget, Hits: 1 + rng.IntN(acct.maxHits)}
		c := fleetCall{account: acct.name, hits: req.Hits, start: time.Now()}
		if l != nil {
			c.decision = l.Take(context.Background(), req)
		} else {
			c.decision = gateway.Take(context.Background(), req)
		}
		c.end = time.Now()
		mine = append(mine, c)
		if pace > 0 {
			time.Sleep(pace)
		}
	}
	return mine
}

// checkFleet holds the calls to the budgets; it reports false when the run
// was inconclusive: an admitted call straddled a window boundary, or an
// account's budget was not reached in a window.
func checkFleet(t *testing.T, calls []fleetCall, accounts []fleetAccount, first int64, window time.Duration) bool {
	t.Helper()
	type key struct {
		account string
		window  int64
	}
	admitted, refused, unavailable := map[key]int{}, map[key]int{}, 0
	straddled, conclusive := 0, true
	for _, c := range calls {
		w := redistest.WindowOf(c.start, window)
		if c.decision == Allow && redistest.WindowOf(c.end, window) != w {
			straddled++
			continue
		}
		switch c.decision {
		case Allow:
			admitted[key{c.account, w}] += c.hits
		case OverLimit:
			refused[key{c.account, w}]++
		default:
			unavailable++
		}
	}
	if unavailable > 0 {
		t.Logf("%d decisions unavailable (the sidecar did not answer within %v)", unavailable, window)
	}
	for _, acct := range accounts {
		for w := first; w <= first+1; w++ {
			k := key{acct.name, w}
			n := admitted[k]
			t.Logf("%s, window %+d: admitted %d of %d, refused %d", acct.name, w-first, n, acct.budget, refused[k])
			if n > acct.budget {
				t.Errorf("%s, window %+d: admitted %d, over the budget of %d", acct.name, w-first, n, acct.budget)
			}
			if refused[k] > 0 && n < acct.budget-acct.short {
				t.Errorf("%s, window %+d: admitted %d and refused %d; want at least %d of the budget %d admitted",
					acct.name, w-first, n, refused[k], acct.budget-acct.short, acct.budget)
			}
			if refused[k] == 0 {
				t.Logf("%s, window %+d: nothing refused; the load did not reach the budget", acct.name, w-first)
				conclusive = false
			}
		}
	}
	for k, n := range admitted {
		if k.window < first || k.window > first+1 {
			t.Errorf("%s: %d admitted in window %+d, outside the run", k.account, n, k.window-first)
		}
	}
	if straddled > 0 {
		t.Logf("%d admitted calls straddled a window boundary", straddled)
		conclusive = false
	}
	return conclusive
}
