package smtpd

import (
	"sync"
	"time"
)

// anvil counts each client address's open sessions and new connections per
// minute, as Postfix's anvil server does for smtpd_client_connection_count_limit
// and smtpd_client_connection_rate_limit, so one address cannot take every
// session slot of a relay or open connections as fast as it can.
type anvil struct {
	maxOpen int           // open sessions per address; 0: no cap
	maxRate int           // new connections per address per window; 0: no cap
	window  time.Duration // of the rate
	now     func() time.Time

	mu      sync.Mutex
	clients map[string]*anvilEntry
	swept   time.Time
}

type anvilEntry struct {
	open  int
	since time.Time // start of the rate window
	count int       // connections since then
}

func newAnvil(maxOpen, maxRate int) *anvil {
	return &anvil{maxOpen: maxOpen, maxRate: maxRate, window: time.Minute, now: time.Now, clients: map[string]*anvilEntry{}}
}

// Refusal reasons, also the metric's label values.
const (
	anvilTooMany = "client_connections"
	anvilTooFast = "client_rate"
)

// connect admits a session from ip, or says why not ("" when admitted).
// An admitted session must be ended with disconnect.
func (a *anvil) connect(ip string) string {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sweep(now)
	e, ok := a.clients[ip]
	if !ok {
		e = &anvilEntry{since: now}
		a.clients[ip] = e
	}
	if now.Sub(e.since) >= a.window {
		e.since, e.count = now, 0
	}
	e.count++ // a refused attempt counts too, as anvil's does
	switch {
	case a.maxRate > 0 && e.count > a.maxRate:
		return anvilTooFast
	case a.maxOpen > 0 && e.open >= a.maxOpen:
		return anvilTooMany
	}
	e.open++
	return ""
}

func (a *anvil) disconnect(ip string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.clients[ip]; ok && e.open > 0 {
		e.open--
	}
}

// sweep forgets addresses with no open session whose window has passed, at
// most once per window.
func (a *anvil) sweep(now time.Time) {
	if now.Sub(a.swept) < a.window {
		return
	}
	a.swept = now
	for ip, e := range a.clients {
		if e.open == 0 && now.Sub(e.since) >= a.window {
			delete(a.clients, ip)
		}
	}
}
