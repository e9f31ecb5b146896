package delivery

import (
	"fmt"
	"time"
)

// Postfix's retry defaults, which Backoff follows.
const (
	// DefaultMinBackoff is the first retry's delay (minimal_backoff_time).
	DefaultMinBackoff = 300 * time.Second
	// DefaultMaxBackoff caps the delay (maximal_backoff_time).
	DefaultMaxBackoff = 4000 * time.Second
	// DefaultQueueLifetime is how long a message is retried before it
	// bounces (maximal_queue_lifetime).
	DefaultQueueLifetime = 5 * 24 * time.Hour
)

// Backoff is the retry schedule of deferred messages.
//
// With Schedule empty, the delay after the n-th failed attempt is Min
// doubled n-1 times, capped at Max: 5 min, 10 min, 20 min, 40 min, then
// 4000 s (about 67 min) with the defaults. With Schedule set, the n-th
// delay is Schedule[n-1], and its last entry repeats. Either way a message
// older than Lifetime expires: it is not retried but bounced.
type Backoff struct {
	Min      time.Duration
	Max      time.Duration
	Schedule []time.Duration
	Lifetime time.Duration
}

// DefaultBackoff is Postfix's schedule: 300 s doubling to 4000 s, five
// days' lifetime.
func DefaultBackoff() Backoff {
	return Backoff{Min: DefaultMinBackoff, Max: DefaultMaxBackoff, Lifetime: DefaultQueueLifetime}
}

// Validate reports a schedule that cannot work.
func (b Backoff) Validate() error {
	for i, d := range b.Schedule {
		if d <= 0 {
			return fmt.Errorf("backoff schedule entry %d (%v) is not positive", i, d)
		}
	}
	if len(b.Schedule) == 0 && (b.Min <= 0 || b.Max < b.Min) {
		return fmt.Errorf("backoff needs 0 < min (%v) <= max (%v)", b.Min, b.Max)
	}
	if b.Lifetime <= 0 {
		return fmt.Errorf("queue lifetime %v is not positive", b.Lifetime)
	}
	return nil
}

// Delay is how long to wait after the attempts-th failed attempt (1 after
// the first failure) before trying again.
func (b Backoff) Delay(attempts int) time.Duration {
	if attempts < 1 {
		attempts = 1
	}
	if len(b.Schedule) > 0 {
		return b.Schedule[min(attempts, len(b.Schedule))-1]
	}
	d := b.Min
	for i := 1; i < attempts && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// Expired reports whether a message received at receivedAt has been in the
// queue too long to be retried at now.
func (b Backoff) Expired(receivedAt, now time.Time) bool {
	return now.Sub(receivedAt) >= b.Lifetime
}

// Next decides what to do after the attempts-th failed attempt of a message
// received at receivedAt: retry after delay, or, when the next try would
// come after the message's lifetime, give up (expired). A retry that would
// fall just past the lifetime still happens once at its end, so a message
// gets its full lifetime of tries.
func (b Backoff) Next(attempts int, receivedAt, now time.Time) (delay time.Duration, expired bool) {
	if b.Expired(receivedAt, now) {
		return 0, true
	}
	delay = b.Delay(attempts)
	if left := b.Lifetime - now.Sub(receivedAt); delay > left {
		delay = left
	}
	return delay, false
}

// Expire turns a deferred recipient's result into the failure a bounce
// reports once the message outlived lifetime: Status 5.4.7 (delivery time
// expired, RFC 3463), keeping the last reply's text and server.
func Expire(r Result, lifetime time.Duration) Result {
	if r.Outcome != Deferred {
		return r
	}
	r.Outcome = Failed
	r.Enhanced = "5.4.7"
	r.Text = fmt.Sprintf("delivery time expired after %v; last error: %s", lifetime, r.Text)
	return r
}
