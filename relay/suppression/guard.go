package suppression

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// lookupTimeout bounds one check: a recipient is not held up longer than
// this by a list that does not answer.
const lookupTimeout = 2 * time.Second

// Guard is what the relay's submission policy and dispatcher use: it
// checks recipients against the List and adds hard bounces to it. Until
// the List is attached (its bucket could not be made yet), and whenever it
// does not answer, a recipient counts as not suppressed: mail is not held
// up by the list, and what slips through is counted and logged.
type Guard struct {
	list    atomic.Pointer[List]
	log     *slog.Logger
	checks  *prometheus.CounterVec
	added   prometheus.Counter
	lastLog atomic.Int64 // unix nanoseconds of the last error logged
}

// NewGuard makes a Guard; reg receives its metrics (nil: none).
func NewGuard(reg prometheus.Registerer, log *slog.Logger) *Guard {
	g := &Guard{
		log: log,
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfleet_suppression_checks_total",
			Help: "Recipients checked against the suppression list, by result: suppressed, clear, or error (the list did not answer; the recipient was let through).",
		}, []string{"result"}),
		added: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailfleet_suppressions_added_total",
			Help: "Recipients added to the suppression list after a hard bounce.",
		}),
	}
	if reg != nil {
		reg.MustRegister(g.checks, g.added)
	}
	return g
}

// Attach starts using l.
func (g *Guard) Attach(l *List) { g.list.Store(l) }

// Suppressed returns apiUser's entry for recipient when it is suppressed.
func (g *Guard) Suppressed(ctx context.Context, apiUser, recipient string) (Entry, bool) {
	l := g.list.Load()
	if l == nil {
		g.checks.WithLabelValues("error").Inc()
		return Entry{}, false
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	e, found, err := l.Lookup(ctx, apiUser, recipient)
	switch {
	case err != nil:
		g.checks.WithLabelValues("error").Inc()
		g.warn("suppression list unavailable; recipients are let through", err)
	case found:
		g.checks.WithLabelValues("suppressed").Inc()
	default:
		g.checks.WithLabelValues("clear").Inc()
	}
	return e, found
}

// Lookup returns apiUser's entry for recipient, for the HTTP API; an error
// when the list cannot be read.
func (g *Guard) Lookup(ctx context.Context, apiUser, recipient string) (Entry, bool, error) {
	l := g.list.Load()
	if l == nil {
		return Entry{}, false, errNotOpen
	}
	return l.Lookup(ctx, apiUser, recipient)
}

// Remove lifts apiUser's suppression of recipient, for the HTTP API.
func (g *Guard) Remove(ctx context.Context, apiUser, recipient string) error {
	l := g.list.Load()
	if l == nil {
		return errNotOpen
	}
	return l.Remove(ctx, apiUser, recipient)
}

var errNotOpen = errors.New("suppression: the list is not open yet")

// Bounced suppresses e.Recipient for apiUser after a hard bounce.
func (g *Guard) Bounced(ctx context.Context, apiUser string, e Entry) {
	l := g.list.Load()
	if l == nil {
		g.warn("suppression list unavailable; a hard bounce is not recorded", nil)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	if err := l.Add(ctx, apiUser, e); err != nil {
		g.warn("suppression list unavailable; a hard bounce is not recorded", err)
		return
	}
	g.added.Inc()
}

// warn logs at most every 10 s, so an outage does not flood the log.
func (g *Guard) warn(msg string, err error) {
	now := time.Now().UnixNano()
	last := g.lastLog.Load()
	if now-last < int64(10*time.Second) || !g.lastLog.CompareAndSwap(last, now) {
		return
	}
	g.log.Warn(msg, "err", err)
}
