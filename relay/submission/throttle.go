package submission

import (
	"sync"
	"time"

	"github.com/mailfleet/mailfleet/api/wire"
)

// authThrottle counts failed authentications per client IP and shuts out an
// IP that failed too often within a window, the way Postfix's anvil and
// fail2ban jails do, so a password guesser gets a few tries per window, not
// thousands.
//
// An attempt takes one of the address's failures before its key is checked
// and gives it back only if the key was right or never tried. Checking the
// count and recording the failure after the check would let an address
// open many sessions at once and have every one of them pass the check.
// When only attempts under way stand between an address and its limit, the
// next one waits for them (a key check, not the network) rather than being
// refused: ten sessions of one client logging in at once all get in, and
// ten parallel guesses still end at the limit.
type authThrottle struct {
	limit  int
	window time.Duration
	now    func() time.Time

	mu      sync.Mutex
	settled *sync.Cond // an attempt ended
	entries map[string]*throttleEntry
	swept   time.Time
}

type throttleEntry struct {
	failures int // within the window that began at since
	pending  int // attempts under way, each holding a failure
	since    time.Time
}

func newAuthThrottle(limit int, window time.Duration) *authThrottle {
	t := &authThrottle{limit: limit, window: window, now: time.Now, entries: map[string]*throttleEntry{}}
	t.settled = sync.NewCond(&t.mu)
	return t
}

// open reports whether ip has failures left, without reserving one: an
// address already shut out gets its 421 before it sends a key.
func (t *authThrottle) open(ip string) bool {
	if t.limit <= 0 {
		return true
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[ip]
	return !ok || now.Sub(e.since) >= t.window || e.failures < t.limit
}

// authAttempt is one authentication under way; exactly one of its methods
// ends it.
type authAttempt struct {
	t  *authThrottle
	ip string
}

// begin reserves a failure for an authentication from ip about to be
// tried, or reports false when ip has none left in the window.
func (t *authThrottle) begin(ip string) (authAttempt, bool) {
	if t.limit <= 0 {
		return authAttempt{}, true
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweep(now)
	for {
		// Looked up again after every wait: a sweep may have dropped the
		// entry once nothing was under way.
		e, ok := t.entries[ip]
		if !ok {
			e = &throttleEntry{since: now}
			t.entries[ip] = e
		}
		if now.Sub(e.since) >= t.window {
			e.failures, e.since = 0, now
		}
		if e.failures >= t.limit {
			return authAttempt{}, false
		}
		if e.failures+e.pending < t.limit {
			e.pending++
			return authAttempt{t: t, ip: ip}, true
		}
		t.settled.Wait()
		now = t.now()
	}
}

// failed turns the reservation into a failure.
func (a authAttempt) failed() { a.end(func(e *throttleEntry) { e.failures++ }) }

// succeeded forgives the key its failures (loginThrottle says which).
func (a authAttempt) succeeded() { a.end(func(e *throttleEntry) { e.failures = 0 }) }

// abandoned gives the reservation back: no key was checked (cancelled,
// malformed, or the connection went away first).
func (a authAttempt) abandoned() { a.end(func(*throttleEntry) {}) }

func (a authAttempt) end(f func(*throttleEntry)) {
	if a.t == nil {
		return
	}
	a.t.mu.Lock()
	defer a.t.mu.Unlock()
	if e, ok := a.t.entries[a.ip]; ok {
		e.pending--
		f(e)
	}
	a.t.settled.Broadcast()
}

// sweep drops expired entries with no attempt under way, at most once per
// window, so the map stays bounded by the IPs that failed recently.
func (t *authThrottle) sweep(now time.Time) {
	if now.Sub(t.swept) < t.window {
		return
	}
	t.swept = now
	for ip, e := range t.entries {
		if e.pending == 0 && (now.Sub(e.since) >= t.window || e.failures == 0) {
			delete(t.entries, ip)
		}
	}
}

// addressShare is how many times an api_user's limit an address may fail
// in a window, over all the api_users it tries.
const addressShare = 10

// loginThrottle counts failures twice: per address and api_user, which a
// login as that api_user forgives (a client that mistyped its key, then
// got it right), and per address at addressShare times the limit, which
// no login forgives.
//
// One count per address, forgiven by any login, let a tenant guess other
// accounts' keys without end, logging in with its own key between
// guesses. One count per address, forgiven by none, would let a client
// with a wrong key lock every other tenant behind the same NAT (a node's
// address, for traffic through a LoadBalancer Service) out of the relay.
// Here a failing client is shut out at its own api_user's limit; its
// further attempts are refused before they count, so it never uses up
// its neighbours' share of the address; and guessing across api_users
// ends at addressShare times the limit.
type loginThrottle struct {
	byAddress *authThrottle
	byUser    *authThrottle
}

func newLoginThrottle(limit int, window time.Duration) *loginThrottle {
	return &loginThrottle{byAddress: newAuthThrottle(addressShare*limit, window), byUser: newAuthThrottle(limit, window)}
}

// open reports whether ip may try at all (see authThrottle.open).
func (t *loginThrottle) open(ip string) bool { return t.byAddress.open(ip) }

// begin reserves a failure of ip, and of ip as username's api_user.
func (t *loginThrottle) begin(ip, username string) (loginAttempt, bool) {
	address, ok := t.byAddress.begin(ip)
	if !ok {
		return loginAttempt{}, false
	}
	apiUser, _, _ := wire.SplitUsername(username)
	user, ok := t.byUser.begin(ip + "\x00" + apiUser)
	if !ok {
		address.abandoned()
		return loginAttempt{}, false
	}
	return loginAttempt{address, user}, true
}

// loginAttempt is one authentication under way; exactly one of its
// methods ends it.
type loginAttempt struct{ address, user authAttempt }

func (a loginAttempt) failed() { a.address.failed(); a.user.failed() }

// succeeded forgives the api_user's failures, not the address's.
func (a loginAttempt) succeeded() { a.address.abandoned(); a.user.succeeded() }

func (a loginAttempt) abandoned() { a.address.abandoned(); a.user.abandoned() }
