package budget

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mailfleet/mailfleet/ratelimit"
	"github.com/mailfleet/mailfleet/ratelimit/ratelimittest"
	"github.com/mailfleet/mailfleet/ratelimit/redistest"
	"github.com/mailfleet/mailfleet/relay/budget/leasewire"
)

// clock is a test's time, shared by a Leased and a fakeLeases.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// fakeLeases is a lease service on a test's clock: one counter per account
// and window, what each holder took, and a log of what it was asked.
type fakeLeases struct {
	clock  *clock
	window time.Duration

	mu      sync.Mutex
	counts  map[string]int64
	held    map[string]int64
	asks    []leasewire.Ask
	unused  []leasewire.Unused
	answer  func(leasewire.Ask) (leasewire.Grant, error) // overrides the counter
	takeErr error
	// hold, when set, is called outside the lock before a call with
	// next-window asks is answered (a slow sidecar).
	hold func()
}

func newFakeLeases(c *clock, window time.Duration) *fakeLeases {
	return &fakeLeases{clock: c, window: window, counts: map[string]int64{}, held: map[string]int64{}}
}

func (f *fakeLeases) TakeLeases(_ context.Context, req *leasewire.TakeRequest) (*leasewire.TakeReply, error) {
	f.mu.Lock()
	hold := f.hold
	f.mu.Unlock()
	if hold != nil && len(req.Asks) > 0 && req.Asks[0].Next {
		hold()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.takeErr != nil {
		return nil, f.takeErr
	}
	reply := &leasewire.TakeReply{}
	now := f.clock.now()
	for _, a := range req.Asks {
		f.asks = append(f.asks, a)
		if f.answer != nil {
			g, err := f.answer(a)
			if err != nil {
				return nil, err
			}
			reply.Grants = append(reply.Grants, g)
			continue
		}
		window := now.UnixNano()/int64(f.window) + 1
		if !a.Next {
			window--
		}
		start := time.Unix(0, window*int64(f.window))
		key := fmt.Sprintf("%s|%d", a.APIUser, window)
		left := a.Limit - f.counts[key]
		g := leasewire.Grant{
			Window: window, WindowMicros: f.window.Microseconds(),
			StartsInMicros: start.Sub(now).Microseconds(), EndsInMicros: start.Add(f.window).Sub(now).Microseconds(),
		}
		if left > 0 && left >= a.Need {
			g.Units = min(max(a.Want, a.Need), left)
		}
		f.counts[key] += g.Units
		f.held[key+"|"+req.Holder] += g.Units
		g.Left = left - g.Units
		reply.Grants = append(reply.Grants, g)
	}
	return reply, nil
}

func (f *fakeLeases) ReturnLeases(_ context.Context, req *leasewire.ReturnRequest) (*leasewire.ReturnReply, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	reply := &leasewire.ReturnReply{}
	for _, u := range req.Unused {
		f.unused = append(f.unused, u)
		key := fmt.Sprintf("%s|%d", u.APIUser, u.Window)
		n := min(u.Units, f.held[key+"|"+req.Holder])
		f.held[key+"|"+req.Holder] -= n
		f.counts[key] -= n
		reply.Returned = append(reply.Returned, n)
	}
	return reply, nil
}

// count is what the account's window has counted.
func (f *fakeLeases) count(apiUser string, window int64) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[fmt.Sprintf("%s|%d", apiUser, window)]
}

func (f *fakeLeases) log() ([]leasewire.Ask, []leasewire.Unused) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]leasewire.Ask(nil), f.asks...), append([]leasewire.Unused(nil), f.unused...)
}

func (f *fakeLeases) set(fn func(*fakeLeases)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func serveLeases(t testing.TB, srv leasewire.Server) string {
	t.Helper()
	return serveGRPC(t, func(g *grpc.Server) { leasewire.RegisterServer(g, srv) })
}

// newTestLeased is a Leased on c's clock (or the real one), whose sweeper
// the test runs by hand (sweep) when it runs on a test clock.
func newTestLeased(t testing.TB, addr string, c *clock, o LeasedOptions) *Leased {
	t.Helper()
	o.Address = addr
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second // a busy machine must not turn a test's decision into 451
	}
	if c != nil {
		o.manualSweeps, o.now = true, c.now
	}
	l, err := NewLeased(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// t0 is a test clock's start: early in a minute.
var t0 = time.Date(2026, 11, 28, 14, 0, 1, 0, time.UTC)

func takeN(l *Leased, req Request, n int) (allowed int, decisions map[Decision]int) {
	decisions = map[Decision]int{}
	for range n {
		d := l.Take(context.Background(), req)
		decisions[d]++
		if d == Allow {
			allowed++
		}
	}
	return allowed, decisions
}

// TestLeasedAdmitsExactlyTheBudgetOnOneRelay: one relay alone admits what a
// ShouldRateLimit caller would, message by message, including messages of
// several recipients at the edge, and asks the sidecar far less often.
func TestLeasedAdmitsExactlyTheBudgetOnOneRelay(t *testing.T) {
	c := &clock{t: t0}
	f := newFakeLeases(c, time.Minute)
	l := newTestLeased(t, serveLeases(t, f), c, LeasedOptions{})
	window := t0.Unix() / 60
	if n, d := takeN(l, Request{APIUser: "acme", Limit: 1000}, 1100); n != 1000 {
		t.Fatalf("admitted %d of 1100 with a budget of 1000 (%v)", n, d)
	}
	waitIdle(t, l, "acme")
	if got := f.count("acme", window); got != 1000 {
		t.Fatalf("the counter holds %d, want 1000", got)
	}
	asks, _ := f.log()
	if len(asks) > 150 {
		t.Errorf("%d lease calls for 1100 messages", len(asks))
	}

	// All or nothing at the edge, as the sidecar's counter decides a call.
	req := func(hits int) Request { return Request{APIUser: "edge", Limit: 10, Hits: hits} }
	for i, tc := range []struct {
		hits int
		want Decision
	}{{4, Allow}, {4, Allow}, {4, OverLimit}, {3, OverLimit}, {2, Allow}, {1, OverLimit}} {
		if got := l.Take(context.Background(), req(tc.hits)); got != tc.want {
			t.Fatalf("message %d of %d recipients: %v, want %v", i, tc.hits, got, tc.want)
		}
		waitIdle(t, l, "edge")
	}
	if d := l.Take(context.Background(), Request{APIUser: "zero", Limit: 0}); d != OverLimit {
		t.Fatalf("zero budget: %v", d)
	}
}

// waitIdle waits for the account's background lease (a refill) to arrive,
// so that a test on a frozen clock sees a settled state.
func waitIdle(t testing.TB, l *Leased, apiUser string) {
	t.Helper()
	a := l.account(apiUser)
	for {
		a.mu.Lock()
		f := a.fetch
		a.mu.Unlock()
		if f == nil {
			return
		}
		<-f.done
	}
}

func heldBy(l *Leased, apiUser string) (cur, next lease) {
	a := l.account(apiUser)
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cur, a.next
}

// TestLeasedBlocksAdapt: a busy account's blocks grow (up to 1/16 of its
// budget) so that it asks rarely; an idle one gives back all but one
// message's worth.
func TestLeasedBlocksAdapt(t *testing.T) {
	c := &clock{t: t0}
	f := newFakeLeases(c, time.Minute)
	l := newTestLeased(t, serveLeases(t, f), c, LeasedOptions{})
	for i := range 2000 {
		c.set(t0.Add(time.Duration(i) * time.Millisecond)) // 1,000 a second
		if d := l.Take(context.Background(), Request{APIUser: "busy", Limit: 16000}); d != Allow {
			t.Fatalf("message %d: %v", i, d)
		}
		waitIdle(t, l, "busy")
	}
	asks, _ := f.log()
	var biggest int64
	for _, a := range asks {
		biggest = max(biggest, a.Want)
	}
	if biggest < 500 || biggest > 1000 || len(asks) > 30 {
		t.Errorf("%d lease calls, the largest block %d; want blocks that grow towards the cap of 1000", len(asks), biggest)
	}
	cur, _ := heldBy(l, "busy")
	if cur.units > 1000 {
		t.Errorf("holds %d, more than 1/16 of the budget", cur.units)
	}

	// Idle: everything but the last message's 3 recipients goes back.
	if d := l.Take(context.Background(), Request{APIUser: "busy", Limit: 16000, Hits: 3}); d != Allow {
		t.Fatal(d)
	}
	waitIdle(t, l, "busy")
	before, _ := heldBy(l, "busy")
	c.set(c.now().Add(DefaultIdleReturn))
	l.sweep(c.now())
	cur, _ = heldBy(l, "busy")
	_, unused := f.log()
	if cur.units != 3 || len(unused) != 1 || unused[0].Units != before.units-3 {
		t.Fatalf("idle: held %d, now %d, gave back %+v; want all but 3 given back", before.units, cur.units, unused)
	}
	if got := f.count("busy", t0.Unix()/60); got != 2000+3+3 {
		t.Fatalf("after the return the counter holds %d, want the 2,003 admitted and the 3 kept", got)
	}
}

// TestLeasedRenewsBeforeTheWindowEnds: an account served in a window gets a
// lease on the next one before it starts, and its first messages there are
// decided without asking; a lease is never used outside its window.
func TestLeasedRenewsBeforeTheWindowEnds(t *testing.T) {
	c := &clock{t: t0}
	f := newFakeLeases(c, time.Minute)
	l := newTestLeased(t, serveLeases(t, f), c, LeasedOptions{})
	end := t0.Truncate(time.Minute).Add(time.Minute)
	if d := l.Take(context.Background(), Request{APIUser: "acme", Limit: 100}); d != Allow {
		t.Fatal(d)
	}
	waitIdle(t, l, "acme")
	c.set(end.Add(-4 * time.Second)) // not yet within a twentieth of the end
	l.sweep(c.now())
	if _, next := heldBy(l, "acme"); next.held() {
		t.Fatal("renewed too early")
	}
	c.set(end.Add(-2 * time.Second))
	l.sweep(c.now())
	_, next := heldBy(l, "acme")
	if !next.held() || next.window != end.Unix()/60 || next.units < 1 || next.from.Before(end) {
		t.Fatalf("next window's lease %+v", next)
	}
	asks, _ := f.log()
	c.set(end.Add(time.Millisecond))
	if d := l.Take(context.Background(), Request{APIUser: "acme", Limit: 100}); d != Allow {
		t.Fatal(d)
	}
	if more, _ := f.log(); len(more) > len(asks)+1 || (len(more) == len(asks)+1 && more[len(more)-1].Need != 0) {
		t.Fatalf("the first message of the window waited for a lease: %+v", more[len(asks):])
	}
	// An account not served in a window is not renewed.
	waitIdle(t, l, "acme")
	c.set(end.Add(time.Minute - 2*time.Second))
	l.sweep(c.now())
	if _, next := heldBy(l, "quiet"); next.held() {
		t.Fatal("renewed an account never served")
	}
}

// TestLeasedRenewsBatchesTwoAtOnce: a relay serving more accounts than one
// call holds sends the next-window batches two at a time: not one after
// another (each slow call would push the next toward the window's end),
// nor all at once (they would crowd Redis past the sidecar's deadline).
func TestLeasedRenewsBatchesTwoAtOnce(t *testing.T) {
	c := &clock{t: t0}
	f := newFakeLeases(c, time.Minute)
	l := newTestLeased(t, serveLeases(t, f), c, LeasedOptions{})
	accounts := 4*leasewire.MaxItems + 1
	for i := range accounts {
		user := fmt.Sprintf("acct-%d", i)
		if d := l.Take(context.Background(), Request{APIUser: user, Limit: 100}); d != Allow {
			t.Fatal(d)
		}
		waitIdle(t, l, user)
	}
	var inFlight, most, calls atomic.Int32
	f.set(func(f *fakeLeases) {
		f.hold = func() {
			calls.Add(1)
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			time.Sleep(50 * time.Millisecond) // long enough for a third to start, were it allowed
		}
	})
	end := t0.Truncate(time.Minute).Add(time.Minute)
	c.set(end.Add(-2 * time.Second))
	l.sweep(c.now())
	if got := most.Load(); got != renewCalls || calls.Load() != 5 {
		t.Fatalf("%d renewal calls, at most %d at once, for %d accounts; want 5, %d at once", calls.Load(), got, accounts, renewCalls)
	}
	for _, user := range []string{"acct-0", fmt.Sprintf("acct-%d", accounts-1)} {
		if _, next := heldBy(l, user); !next.held() {
			t.Fatalf("%s has no lease on the next window", user)
		}
	}
}

// TestLeasedFailuresAre451: when a message needs a lease and the sidecar
// fails or is away, the answer is Unavailable (451), never OverLimit
// (536); units already leased keep admitting.
func TestLeasedFailuresAre451(t *testing.T) {
	c := &clock{t: t0}
	f := newFakeLeases(c, time.Minute)
	l := newTestLeased(t, serveLeases(t, f), c, LeasedOptions{SidecarOptions: SidecarOptions{Timeout: clientTimeout}})
	if d := l.Take(context.Background(), Request{APIUser: "acme", Limit: 160, Hits: 5}); d != Allow {
		t.Fatal(d)
	}
	waitIdle(t, l, "acme")
	f.set(func(f *fakeLeases) { f.takeErr = status.Error(codes.Unavailable, "failure mode deny") })
	cur, _ := heldBy(l, "acme")
	if n, d := takeN(l, Request{APIUser: "acme", Limit: 160}, int(cur.units)+3); n != int(cur.units) || d[Unavailable] != 3 || d[OverLimit] != 0 {
		t.Fatalf("held %d units with the sidecar failing: %v", cur.units, d)
	}
	f.set(func(f *fakeLeases) {
		f.takeErr = nil
		f.answer = func(leasewire.Ask) (leasewire.Grant, error) {
			time.Sleep(2 * clientTimeout)
			return leasewire.Grant{}, nil
		}
	})
	start := time.Now()
	if d := l.Take(context.Background(), Request{APIUser: "slow", Limit: 10}); d != Unavailable {
		t.Fatalf("no answer in time: %v", d)
	}
	if took := time.Since(start); took > clientTimeout+slack {
		t.Fatalf("Take took %v", took)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	away := newTestLeased(t, addr, nil, LeasedOptions{SidecarOptions: SidecarOptions{Timeout: clientTimeout}})
	if d := away.Take(context.Background(), Request{APIUser: "acme", Limit: 10}); d != Unavailable {
		t.Fatalf("no sidecar: %v", d)
	}
}

// TestLeasedAgainstRatelimit runs the client against the real sidecar and
// Redis, in both failure modes: exactly the budget, then 536; with Redis
// gone, allow decides from the pod's fallback and deny is 451, never 536.
func TestLeasedAgainstRatelimit(t *testing.T) {
	tests := []struct {
		mode      ratelimit.FailureMode
		redisDown Decision
	}{
		{ratelimit.FailureAllow, Allow},
		{ratelimit.FailureDeny, Unavailable},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			r := redistest.StartRedis(t)
			redistest.WaitForTimeLeft(time.Hour, 10*time.Second)
			// A generous deadline: while Redis is up, a busy machine must
			// not make the failure mode decide.
			sc := ratelimittest.StartSidecar(t, r.Addr, ratelimit.Options{Window: time.Hour, FailureMode: tt.mode, Deadline: 2 * time.Second})
			l := newTestLeased(t, sc.Addr, nil, LeasedOptions{})
			user := "acme-" + string(tt.mode)
			if n, d := takeN(l, Request{APIUser: user, LabelID: "1001", Limit: 50}, 60); n != 50 || d[OverLimit] != 10 {
				t.Fatalf("budget 50: %v", d)
			}
			r.Kill()
			if got := l.Take(context.Background(), Request{APIUser: "fresh", Limit: 3}); got != tt.redisDown {
				t.Fatalf("Redis down, failure mode %s: %v, want %v", tt.mode, got, tt.redisDown)
			}
		})
	}
}

// TestLeasedWithoutLeaseService: a sidecar older than the relay, with the
// rate limit service only, is asked once per message.
func TestLeasedWithoutLeaseService(t *testing.T) {
	var over atomic.Bool
	f := &fakeSidecar{answer: func(context.Context) (*rlsv3.RateLimitResponse, error) {
		if over.Load() {
			return &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OVER_LIMIT}, nil
		}
		return &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}, nil
	}}
	l := newTestLeased(t, serveFake(t, f), nil, LeasedOptions{})
	if d := l.Take(context.Background(), Request{APIUser: "acme", LabelID: "1001", Limit: 10}); d != Allow {
		t.Fatalf("first message: %v", d)
	}
	over.Store(true)
	if d := l.Take(context.Background(), Request{APIUser: "acme", Limit: 10}); d != OverLimit {
		t.Fatalf("second message: %v", d)
	}
	if got := f.lastRequest().GetDescriptors()[0].GetLimit().GetRequestsPerUnit(); got != 10 {
		t.Fatalf("asked with limit %d", got)
	}
}

// accountIfAny is the account's state, if this relay has any.
func (l *Leased) accountIfAny(apiUser string) (*account, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	a, ok := l.accounts[apiUser]
	return a, ok
}

// TestLeasedMetrics: the relay counts decisions that waited for a lease,
// times its lease calls by kind and result, and says how many accounts it
// holds; no series names an account.
func TestLeasedMetrics(t *testing.T) {
	c := &clock{t: t0}
	f := newFakeLeases(c, time.Minute)
	reg := prometheus.NewRegistry()
	l := newTestLeased(t, serveLeases(t, f), c, LeasedOptions{Registerer: reg})
	takeN(l, Request{APIUser: "acme", Limit: 1000}, 10)
	takeN(l, Request{APIUser: "globex", Limit: 1000}, 1)
	waitIdle(t, l, "acme")
	waitIdle(t, l, "globex")
	if got := testutil.ToFloat64(l.metrics.waits); got < 2 {
		t.Errorf("waits = %v; the first message of each account waits for its lease", got)
	}
	if got := testutil.ToFloat64(l.metrics.accounts); got != 2 {
		t.Errorf("accounts = %v, want 2", got)
	}
	c.set(t0.Add(DefaultIdleReturn + time.Second))
	l.sweep(c.now()) // gives back what the idle accounts hold
	f.set(func(f *fakeLeases) { f.takeErr = status.Error(codes.Unavailable, "down") })
	l.Take(context.Background(), Request{APIUser: "initech", Limit: 1000})
	want := map[string]bool{"take/ok": true, "return/ok": true, "take/error": true}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range families {
		for _, m := range fam.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
				if v := lp.GetValue(); v == "acme" || v == "globex" || v == "initech" {
					t.Errorf("%s names an account: %s=%s", fam.GetName(), lp.GetName(), v)
				}
			}
			if fam.GetName() == "mailfleet_budget_lease_call_seconds" {
				delete(want, labels["kind"]+"/"+labels["result"])
			}
		}
	}
	if len(want) > 0 {
		t.Errorf("no lease call series for %v", want)
	}
}
