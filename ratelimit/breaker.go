package ratelimit

import (
	"sync/atomic"
	"time"
)

// breakerThreshold is how many Redis failures in a row make the sidecar stop
// asking Redis for a while. One slow reply is not an outage; several in a
// row are, and then asking again for every decision would only make each
// decision wait out the deadline (and, during a CLIENT PAUSE or a hung
// Redis, open and drop a connection per decision).
const breakerThreshold = 3

// breaker remembers recent Redis failures. It is deliberately simple: after
// breakerThreshold consecutive failures, decisions skip Redis until the
// cooldown has passed, then the next decisions try it again; one success
// closes it.
type breaker struct {
	cooldown  time.Duration
	failures  atomic.Int64
	openUntil atomic.Int64 // unix nanoseconds
}

// allow says whether to try Redis now.
func (b *breaker) allow(now time.Time) bool {
	return now.UnixNano() >= b.openUntil.Load()
}

// failure records a failed call; it reports true when this failure is the
// one that opened the breaker, so the caller logs the outage once.
func (b *breaker) failure(now time.Time) (opened bool) {
	n := b.failures.Add(1)
	if n < breakerThreshold {
		return false
	}
	b.openUntil.Store(now.Add(b.cooldown).UnixNano())
	return n == breakerThreshold
}

// success records a good call; it reports true when it ends an outage.
func (b *breaker) success() (recovered bool) {
	if b.failures.Load() == 0 {
		return false // the common case costs a load, not a write
	}
	return b.failures.Swap(0) >= breakerThreshold
}
