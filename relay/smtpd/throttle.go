package smtpd

import (
	"net"
	"sync"
	"time"
)

// authThrottle counts failed authentications per client IP and shuts out an
// IP that failed too often within a window, the way Postfix's anvil and
// fail2ban jails do, so a password guesser gets a few tries per window, not
// thousands.
type authThrottle struct {
	limit  int
	window time.Duration
	now    func() time.Time

	mu      sync.Mutex
	entries map[string]*throttleEntry
	swept   time.Time
}

type throttleEntry struct {
	failures int
	since    time.Time
}

func newAuthThrottle(limit int, window time.Duration) *authThrottle {
	return &authThrottle{limit: limit, window: window, now: time.Now, entries: map[string]*throttleEntry{}}
}

// blocked reports whether ip has used up its failures for the window.
func (t *authThrottle) blocked(ip string) bool {
	if t.limit <= 0 {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[ip]
	return ok && t.now().Sub(e.since) < t.window && e.failures >= t.limit
}

// fail records a failure for ip.
func (t *authThrottle) fail(ip string) {
	if t.limit <= 0 {
		return
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweep(now)
	e, ok := t.entries[ip]
	if !ok || now.Sub(e.since) >= t.window {
		e = &throttleEntry{since: now}
		t.entries[ip] = e
	}
	e.failures++
}

// sweep drops expired entries at most once per window, so the map stays
// bounded by the IPs that failed recently.
func (t *authThrottle) sweep(now time.Time) {
	if now.Sub(t.swept) < t.window {
		return
	}
	t.swept = now
	for ip, e := range t.entries {
		if now.Sub(e.since) >= t.window {
			delete(t.entries, ip)
		}
	}
}

// remoteIP is the throttle's key for a connection.
func remoteIP(addr net.Addr) string {
	if tcp, ok := addr.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	return host
}
