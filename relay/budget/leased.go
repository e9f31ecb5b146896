package budget

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mailfleet/mailfleet/relay/budget/leasewire"
)

// Leased is the fleet-wide budget decided in the relay process. It takes
// leases, blocks of an account's budget for one counting window, from the
// rate-limit sidecar, which takes them atomically from the same Redis
// counter the sidecar's ShouldRateLimit counts in; each message is then
// decided from the local lease in well under a microsecond of work instead
// of a loopback gRPC round trip. Totals stay exact: a unit is admitted only
// from a lease Redis granted and counted, in the window it was granted for,
// so the fleet and any gateway asking ShouldRateLimit never admit more than
// an account's budget per window.
//
// How much is leased:
//
//   - A block adapts to the account's rate on this relay: it starts at one
//     unit (or the message's recipients) and doubles while a block lasts
//     less than half of LeaseLife, halving when it lasts more than twice
//     that, and jumps to what is waiting when messages queue behind a
//     fetch. A refill is taken in the background when half of a block is
//     left, so a busy account does not wait for one; the refills of all
//     accounts go together, one call per round trip.
//   - A relay holds at most 1/16 of an account's budget (beyond the message
//     being decided), and the sidecar grants at most a quarter of what is
//     left beyond what the message needs: near the budget's edge leases
//     shrink to what each message needs.
//   - After IdleReturn without a message for an account the relay gives
//     back all but one message's worth (the last message's recipients); a
//     relay shutting down gives back everything.
//   - Shortly before a window ends, every account the relay served in it
//     gets a lease on the next window, so the first messages of a window do
//     not wait either.
//
// The cost of exactness: units leased to one relay cannot admit a message
// on another. When an account's budget is all counted, a message on one
// relay gets 536 while another relay may still hold unused units of it,
// until that relay uses them, gives them back (IdleReturn after its last
// message for the account) or the window ends. The bounds above keep that
// to at most 1/16 of the budget per relay, and in practice to what a relay
// uses in about a LeaseLife.
//
// Failures keep the Sidecar's answers: a message that needs a lease when
// the sidecar does not answer in time, or answers Unavailable (failure mode
// deny), is Unavailable (451 4.7.1), never OverLimit; with failure mode
// allow the sidecar's fallback limiter decides the message itself. Units
// already leased keep admitting while the sidecar is away: they are
// counted in Redis. A sidecar without the lease service (one older than
// the relay) is asked once per message, as Sidecar does.
type Leased struct {
	sidecarHealth
	conn   *grpc.ClientConn
	client leasewire.Client
	// perMessage is set once the sidecar turned out to have no lease
	// service; from then on rls decides.
	perMessage atomic.Bool
	rls        *Sidecar
	// waits counts decisions that waited for a lease (for benchmarks).
	waits   atomic.Int64
	metrics *leaseMetrics
	holder  string
	timeout time.Duration
	life    time.Duration
	idle    time.Duration
	now     func() time.Time

	mu       sync.RWMutex
	accounts map[string]*account

	// window is the sidecar's counting window in nanoseconds, learned from
	// its grants (a minute until the first).
	window atomic.Int64

	// Refills waiting to be sent, all in the next call (see flush).
	refillMu sync.Mutex
	refills  []pendingRefill
	kick     chan struct{}

	stop    chan struct{}
	stopped sync.WaitGroup
	closed  sync.Once
}

// pendingRefill is a refill waiting for the next call.
type pendingRefill struct {
	a   *account
	f   *fetch
	ask leasewire.Ask
}

// Defaults for LeasedOptions.
const (
	DefaultLeaseLife  = time.Second
	DefaultIdleReturn = 2 * time.Second
)

// leaseCapDivisor: a relay holds at most 1/leaseCapDivisor of an account's
// budget, beyond the message it is deciding.
const leaseCapDivisor = 16

// LeasedOptions say how to reach the sidecar and how to lease.
type LeasedOptions struct {
	SidecarOptions
	// Holder names this process to the sidecar, which keeps what each
	// holder leased so that it can give back no more. Default: the host
	// name and a random suffix, new for each process.
	Holder string
	// LeaseLife is how long a block should last at an account's rate on
	// this relay (default DefaultLeaseLife).
	LeaseLife time.Duration
	// IdleReturn is how long after an account's last message the relay
	// gives back what it holds of it, but for one message's worth (default
	// DefaultIdleReturn).
	IdleReturn time.Duration
	// Registerer takes the relay-side lease metrics; nil registers none.
	Registerer prometheus.Registerer

	// manualSweeps leaves sweeping to the caller, and now replaces the
	// clock (tests).
	manualSweeps bool
	now          func() time.Time
}

// NewLeased connects to the sidecar in the background; Take works as soon
// as the connection is up and answers Unavailable until then.
func NewLeased(o LeasedOptions) (*Leased, error) {
	o.defaults()
	if o.Holder == "" {
		o.Holder = newHolder()
	}
	if o.LeaseLife <= 0 {
		o.LeaseLife = DefaultLeaseLife
	}
	if o.IdleReturn <= 0 {
		o.IdleReturn = DefaultIdleReturn
	}
	if o.now == nil {
		o.now = time.Now
	}
	conn, err := dialSidecar(o.Address)
	if err != nil {
		return nil, err
	}
	l := &Leased{
		sidecarHealth: sidecarHealth{log: o.Log},
		conn:          conn,
		client:        leasewire.NewClient(conn),
		rls:           newSidecar(conn, o.SidecarOptions),
		holder:        o.Holder,
		timeout:       o.Timeout,
		life:          o.LeaseLife,
		idle:          o.IdleReturn,
		now:           o.now,
		accounts:      map[string]*account{},
		kick:          make(chan struct{}, 1),
		stop:          make(chan struct{}),
	}
	l.metrics = newLeaseMetrics(o.Registerer, l.accountCount)
	if !o.manualSweeps {
		l.stopped.Go(l.run)
	}
	l.stopped.Go(l.flush)
	return l, nil
}

// newHolder names a process uniquely: a restarted relay is a new holder,
// and what its predecessor held stays counted until its window ends.
func newHolder() string {
	host, _ := os.Hostname()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return host[:min(len(host), 64)] + "-" + hex.EncodeToString(b)
}

// account is what this relay holds of one account's budget.
type account struct {
	name string

	mu       sync.Mutex
	cur      lease  // the window now
	next     lease  // the next window, taken before it starts
	fetch    *fetch // a lease on its way, at most one
	renewing bool   // a lease on the next window is on its way
	gone     bool   // dropped from the map; look it up again

	limit     int64     // the budget, from the last message
	block     int64     // what a refill asks for, adapted to the rate
	lastHits  int64     // the last message's recipients
	lastUse   time.Time // the last message
	idle      bool      // given back since the last message
	grantedAt time.Time // when units last arrived, for the rate
}

// lease is units of one window, usable from from until until on this
// process's clock. Both ends are conservative: from is no earlier and until
// no later than the window's bounds on Redis's clock, whatever the skew
// between the clocks (see leaseOf). A zero until is no lease.
type lease struct {
	window      int64
	units       int64
	from, until time.Time
}

func (l *lease) held() bool { return !l.until.IsZero() }

// fetch is a lease on its way. Messages that the lease at hand cannot cover
// wait for it in order; when it arrives they are decided in that order.
type fetch struct {
	done    chan struct{}
	waiters []*waiter
}

type waiter struct {
	hits     int64
	decided  bool
	decision Decision
	gone     bool // gave up waiting
}

// Take decides one message of req.APIUser: from the lease at hand when it
// covers req's recipients, else after a lease is fetched.
func (l *Leased) Take(ctx context.Context, req Request) Decision {
	if req.Limit <= 0 {
		return OverLimit // nothing to ask: a zero budget admits nothing
	}
	hits, limit := int64(req.hits()), int64(req.Limit)
	var deadline time.Time
	waited := false
	for {
		if l.perMessage.Load() {
			return l.rls.Take(ctx, req)
		}
		a := l.account(req.APIUser)
		a.mu.Lock()
		if a.gone {
			a.mu.Unlock()
			continue
		}
		now := l.now()
		a.roll(now)
		a.used(now, hits, limit)
		if a.usable(now) && a.cur.units >= hits {
			a.cur.units -= hits
			l.refill(a, now)
			a.mu.Unlock()
			return Allow
		}
		if deadline.IsZero() {
			deadline = now.Add(l.timeout)
		} else if !now.Before(deadline) {
			a.mu.Unlock()
			return Unavailable
		}
		// Between two windows: the next window's lease begins a round trip
		// after this one's ends (both ends are conservative).
		if gap := a.next.from.Sub(now); !a.cur.held() && a.next.held() && a.next.units >= hits && gap > 0 && now.Add(gap).Before(deadline) {
			a.mu.Unlock()
			if !sleep(ctx, gap) {
				return Unavailable
			}
			continue
		}
		f := a.fetch
		if f == nil {
			f = l.fetchFor(a, now, hits)
		}
		w := &waiter{hits: hits}
		f.waiters = append(f.waiters, w)
		a.mu.Unlock()
		if !waited {
			waited = true
			l.waits.Add(1)
			l.metrics.waits.Inc()
		}
		if d, ok := l.wait(ctx, a, f, w, deadline); ok {
			return d
		}
	}
}

// account returns the state of apiUser, made on first use.
func (l *Leased) account(apiUser string) *account {
	l.mu.RLock()
	a := l.accounts[apiUser]
	l.mu.RUnlock()
	if a != nil {
		return a
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if a = l.accounts[apiUser]; a == nil {
		a = &account{name: apiUser, block: 1}
		l.accounts[apiUser] = a
	}
	return a
}

// wait waits for f to decide w, until the deadline or ctx ends. It reports
// false when f arrived without deciding w: w asks again.
func (l *Leased) wait(ctx context.Context, a *account, f *fetch, w *waiter, deadline time.Time) (Decision, bool) {
	timer := time.NewTimer(deadline.Sub(l.now()))
	defer timer.Stop()
	select {
	case <-f.done:
	case <-ctx.Done():
	case <-timer.C:
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if w.decided {
		return w.decision, true
	}
	select {
	case <-f.done:
		return 0, false
	default:
		w.gone = true
		return Unavailable, true
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// used records a message (a.mu held).
func (a *account) used(now time.Time, hits, limit int64) {
	a.lastUse, a.idle, a.lastHits, a.limit = now, false, hits, limit
}

// roll drops leases whose window has ended and makes the next window's
// lease current once it has begun (a.mu held). What a dropped lease still
// held is not given back: its window no longer admits anything.
func (a *account) roll(now time.Time) {
	if a.cur.held() && !now.Before(a.cur.until) {
		a.cur = lease{}
	}
	if a.next.held() && !now.Before(a.next.until) {
		a.next = lease{}
	}
	if !a.cur.held() && a.next.held() && !now.Before(a.next.from) {
		a.cur, a.next = a.next, lease{}
	}
}

func (a *account) usable(now time.Time) bool {
	return a.cur.held() && !now.Before(a.cur.from) && now.Before(a.cur.until)
}

// add puts granted units where they belong: with the lease of the same
// window, as the current lease when their window has begun, else as the
// next (a.mu held). Units of a window older than the current lease's are
// dropped (they cannot be: one fetch at a time asks for the window Redis
// is in).
func (a *account) add(l lease, now time.Time) {
	if l.units <= 0 || !now.Before(l.until) || merge(&a.cur, l) || merge(&a.next, l) {
		return
	}
	if !now.Before(l.from) {
		if !a.cur.held() || a.cur.window < l.window {
			a.cur = l
		}
		if a.next.held() && a.next.window <= a.cur.window {
			a.next = lease{}
		}
		return
	}
	if !a.next.held() || l.window < a.next.window {
		a.next = l
	}
}

func merge(into *lease, l lease) bool {
	if !into.held() || into.window != l.window {
		return false
	}
	into.units += l.units
	if l.from.Before(into.from) {
		into.from = l.from
	}
	if l.until.After(into.until) {
		into.until = l.until
	}
	return true
}

// cap is the most this relay holds of the account: 1/16 of its budget.
func (a *account) cap() int64 { return max(a.limit/leaseCapDivisor, 1) }

// target is the block to ask for: the adapted block, at least the last
// message's recipients, at most cap.
func (a *account) target() int64 { return min(max(a.block, a.lastHits), a.cap()) }

// reserve is what an idle account keeps: one message's worth.
func (a *account) reserve() int64 { return min(a.lastHits, a.cap()) }

// adapt sizes the block to the rate: the block granted last should last
// about life (a.mu held; called when it runs low).
func (a *account) adapt(now time.Time, life time.Duration) {
	if a.grantedAt.IsZero() {
		return
	}
	switch lasted := now.Sub(a.grantedAt); {
	case lasted < life/2:
		a.block = min(a.block*2, a.cap())
	case lasted > 2*life:
		a.block = max(a.block/2, 1)
	}
}

// refill takes the next block in the background once half of one is left,
// so the account's next messages do not wait (a.mu held). Near the window's
// end it asks only for what the rest of the window will use at this rate.
func (l *Leased) refill(a *account, now time.Time) {
	target := a.target()
	if a.fetch != nil || a.cur.units*2 > target {
		return
	}
	a.adapt(now, l.life)
	want := min(a.target(), a.cap()-a.cur.units)
	if left := a.cur.until.Sub(now); left < l.life {
		want = max(want*int64(left)/int64(l.life), 1)
	}
	if want <= 0 {
		return
	}
	a.fetch = &fetch{done: make(chan struct{})}
	l.refillMu.Lock()
	l.refills = append(l.refills, pendingRefill{a, a.fetch, leasewire.Ask{APIUser: a.name, Limit: a.limit, Want: want}})
	l.refillMu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// flush sends the queued refills until Close, all that queued while the
// previous call was out in one call: with many accounts each holding a
// little (a unit or two of an account that sends now and then), refills
// are as frequent as messages, and one call per refill would cost the
// sidecar as much as asking per message.
func (l *Leased) flush() {
	for {
		select {
		case <-l.stop:
			return
		case <-l.kick:
		}
		for {
			l.refillMu.Lock()
			batch := l.refills[:min(len(l.refills), leasewire.MaxItems)]
			l.refills = l.refills[len(batch):]
			l.refillMu.Unlock()
			if len(batch) == 0 {
				break
			}
			asks := make([]leasewire.Ask, len(batch))
			for i, p := range batch {
				asks[i] = p.ask
			}
			reply, err, sent, received := l.take(asks)
			for i, p := range batch {
				var g *leasewire.Grant
				if err == nil {
					g = &reply.Grants[i]
				}
				l.settle(p.a, p.f, g, err, sent, received)
			}
		}
	}
}

// fetchFor takes a lease for a message of hits recipients that the lease
// at hand cannot cover (a.mu held): its need is what the lease lacks.
func (l *Leased) fetchFor(a *account, now time.Time, hits int64) *fetch {
	need := hits
	if a.usable(now) {
		need -= a.cur.units
		a.adapt(now, l.life)
	}
	f := &fetch{done: make(chan struct{})}
	a.fetch = f
	go l.runFetch(a, f, leasewire.Ask{APIUser: a.name, Limit: a.limit, Want: max(need, a.target()), Need: need})
	return f
}

// runFetch takes one lease and decides the messages waiting for it.
func (l *Leased) runFetch(a *account, f *fetch, ask leasewire.Ask) {
	reply, err, sent, received := l.take([]leasewire.Ask{ask})
	var g *leasewire.Grant
	if err == nil {
		g = &reply.Grants[0]
	}
	l.settle(a, f, g, err, sent, received)
}

// take asks for leases, within the timeout.
func (l *Leased) take(asks []leasewire.Ask) (reply *leasewire.TakeReply, err error, sent, received time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	sent = l.now()
	reply, err = l.client.Take(ctx, &leasewire.TakeRequest{Holder: l.holder, Asks: asks})
	received = l.now()
	l.metrics.call("take", err, sent, received)
	return reply, err, sent, received
}

// settle ends fetch f of a with its grant g, or err.
func (l *Leased) settle(a *account, f *fetch, g *leasewire.Grant, err error, sent, received time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	leased := l.arrived(a, f, g, err, sent, received)
	a.fetch = nil
	close(f.done)
	// The messages it served may have left the lease low. Only after a
	// grant: a refill that got nothing must not ask again at once, or an
	// account at its budget's edge would spin; its next message asks.
	if leased && a.usable(received) {
		l.refill(a, received)
	}
}

// arrived applies a lease's answer and decides the messages waiting for it
// (a.mu held). It reports whether Redis leased any units.
func (l *Leased) arrived(a *account, f *fetch, grant *leasewire.Grant, err error, sent, received time.Time) bool {
	if status.Code(err) == codes.Unimplemented {
		// The waiters ask again, per message.
		if !l.perMessage.Swap(true) {
			l.log.Warn("the budget sidecar has no lease service; asking it once per message", "err", err)
		}
		return false
	}
	if err != nil {
		l.failed(err)
		for _, w := range f.waiters {
			decide(w, Unavailable)
		}
		return false
	}
	l.answered()
	g := *grant
	l.learn(g)
	// A grant from the sidecar's fallback limiter is a decision for the
	// message that asked, counted nowhere shared: it is used now or never.
	var fallback int64
	if g.Fallback {
		fallback = g.Units
	} else if g.Units > 0 {
		a.add(leaseOf(g, sent, received), received)
		a.grantedAt = received
	}
	a.roll(received)
	var unserved int64
	for _, w := range f.waiters {
		have := fallback
		if a.usable(received) {
			have += a.cur.units
		}
		switch {
		case w.gone || w.decided:
		case have >= w.hits:
			fromLease := w.hits - min(fallback, w.hits)
			fallback -= w.hits - fromLease
			a.cur.units -= fromLease
			decide(w, Allow)
		case w.hits > have+g.Left:
			// The window had less left than this message lacks.
			decide(w, OverLimit)
		default:
			// The window may still have enough: w asks again.
			unserved += w.hits
		}
	}
	if unserved > 0 {
		// More messages came in one round trip than the block holds: a
		// burst, which doubling once per round trip would follow slowly.
		a.block = min(max(a.block*2, unserved), a.cap())
	}
	return !g.Fallback && g.Units > 0
}

func decide(w *waiter, d Decision) {
	if !w.gone && !w.decided {
		w.decided, w.decision = true, d
	}
}

// leaseOf places a grant on this process's clock. Redis decided between
// sent and received, so the window began no later than received+StartsIn
// and ends no earlier than sent+EndsIn: the lease is used only inside its
// window, however the clocks differ.
func leaseOf(g leasewire.Grant, sent, received time.Time) lease {
	return lease{
		window: g.Window,
		units:  g.Units,
		from:   received.Add(time.Duration(g.StartsInMicros) * time.Microsecond),
		until:  sent.Add(time.Duration(g.EndsInMicros) * time.Microsecond),
	}
}

// learn keeps the sidecar's window length.
func (l *Leased) learn(g leasewire.Grant) {
	if g.WindowMicros > 0 {
		l.window.Store(int64(time.Duration(g.WindowMicros) * time.Microsecond))
	}
}

func (l *Leased) windowLength() time.Duration {
	if w := l.window.Load(); w > 0 {
		return time.Duration(w)
	}
	return time.Minute
}

// run sweeps the accounts until Close: idle returns, next-window leases,
// and forgetting accounts unused for two windows. It ticks 60 times a
// window (once a second for a minute), at least every 10 ms.
func (l *Leased) run() {
	for {
		tick := time.NewTimer(max(l.windowLength()/60, 10*time.Millisecond))
		select {
		case <-l.stop:
			tick.Stop()
			return
		case <-tick.C:
		}
		l.sweep(l.now())
	}
}

func (l *Leased) accountCount() float64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return float64(len(l.accounts))
}

func (l *Leased) snapshot() []*account {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]*account, 0, len(l.accounts))
	for _, a := range l.accounts {
		out = append(out, a)
	}
	return out
}

// sweep gives back what idle accounts hold beyond a message's worth, takes
// next-window leases for the accounts served in this window once the
// window is within a twentieth of its end, and forgets accounts with
// nothing held and no message for two windows.
func (l *Leased) sweep(now time.Time) {
	window := l.windowLength()
	renewAhead := window / 20
	var unused []leasewire.Unused
	var renew []*account
	var asks []leasewire.Ask
	for _, a := range l.snapshot() {
		a.mu.Lock()
		a.roll(now)
		if !a.idle && now.Sub(a.lastUse) >= l.idle {
			a.idle = true
			a.block = max(a.block/2, 1)
			unused = a.giveBack(unused, a.reserve())
		}
		if !a.renewing && !a.next.held() && a.cur.held() && a.cur.until.Sub(now) <= renewAhead &&
			a.lastUse.After(a.cur.until.Add(-window)) {
			want := a.target()
			if a.idle {
				want = a.reserve()
			}
			a.renewing = true
			renew = append(renew, a)
			asks = append(asks, leasewire.Ask{APIUser: a.name, Limit: a.limit, Want: want, Next: true})
		}
		if !a.cur.held() && !a.next.held() && a.fetch == nil && !a.renewing && now.Sub(a.lastUse) > 2*window {
			a.gone = true
			l.mu.Lock()
			delete(l.accounts, a.name)
			l.mu.Unlock()
		}
		a.mu.Unlock()
	}
	l.giveBackAll(unused)
	l.renew(renew, asks, max(l.timeout, renewAhead/2))
}

// giveBack adds to unused what a's leases hold beyond keep, which they
// keep (a.mu held).
func (a *account) giveBack(unused []leasewire.Unused, keep int64) []leasewire.Unused {
	for _, s := range []*lease{&a.cur, &a.next} {
		if s.held() && s.units > keep {
			unused = append(unused, leasewire.Unused{APIUser: a.name, Window: s.window, Units: s.units - keep})
			s.units = keep
		}
	}
	return unused
}

// renew asks for next-window leases, MaxItems at a time, renewCalls
// batches at once. One after another, a relay serving thousands of
// accounts could spend the last twentieth of the window waiting on its own
// calls; all at once, they crowd Redis (one thread) so that each misses the
// sidecar's deadline and gets nothing, and the messages decided meanwhile
// wait behind them.
func (l *Leased) renew(accounts []*account, asks []leasewire.Ask, timeout time.Duration) {
	var wg sync.WaitGroup
	calls := make(chan struct{}, renewCalls)
	for len(asks) > 0 {
		n := min(len(asks), leasewire.MaxItems)
		batch, batchAsks := accounts[:n], asks[:n]
		calls <- struct{}{}
		wg.Go(func() {
			defer func() { <-calls }()
			l.renewBatch(batch, batchAsks, timeout)
		})
		accounts, asks = accounts[n:], asks[n:]
	}
	wg.Wait()
}

// renewCalls bounds the next-window calls a relay has out at once.
const renewCalls = 2

func (l *Leased) renewBatch(accounts []*account, asks []leasewire.Ask, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	sent := l.now()
	reply, err := l.client.Take(ctx, &leasewire.TakeRequest{Holder: l.holder, Asks: asks})
	received := l.now()
	cancel()
	l.metrics.call("renew", err, sent, received)
	if err != nil {
		l.log.Debug("leases on the next window not taken", "accounts", len(asks), "err", err)
	}
	for i, a := range accounts {
		a.mu.Lock()
		a.renewing = false
		if err == nil {
			g := reply.Grants[i]
			l.learn(g)
			if !g.Fallback {
				a.add(leaseOf(g, sent, received), received)
			}
		}
		a.mu.Unlock()
	}
}

// giveBackAll returns unused units, MaxItems at a time. A return that
// fails leaves them counted until their window ends: fewer admitted, never
// more.
func (l *Leased) giveBackAll(unused []leasewire.Unused) {
	for len(unused) > 0 {
		n := min(len(unused), leasewire.MaxItems)
		ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
		sent := l.now()
		_, err := l.client.Return(ctx, &leasewire.ReturnRequest{Holder: l.holder, Unused: unused[:n]})
		l.metrics.call("return", err, sent, l.now())
		cancel()
		if err != nil {
			l.log.Debug("unused lease units not given back; they stay counted until their window ends", "leases", n, "err", err)
		}
		unused = unused[n:]
	}
}

// Close gives back every unit this process holds and closes the
// connection. The relay closes its budget after its sessions drained.
func (l *Leased) Close() error {
	var err error
	l.closed.Do(func() {
		close(l.stop)
		l.stopped.Wait()
		now := l.now()
		var unused []leasewire.Unused
		for _, a := range l.snapshot() {
			a.mu.Lock()
			a.roll(now)
			unused = a.giveBack(unused, 0)
			a.mu.Unlock()
		}
		l.giveBackAll(unused)
		err = closeConn(l.conn)
	})
	return err
}
