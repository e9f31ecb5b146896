package suppression

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"strconv"
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
	list atomic.Pointer[List]
	// manual is the accounts' SmtpSuppressions, from their credentials:
	// checked first, and whether JetStream answers or not.
	manual  Manual
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

// Manual is the entries people keep with SmtpSuppressions, which reach
// the relay with the accounts' credentials.
type Manual interface {
	// Manual is apiUser's entry for recipient, if one holds now.
	Manual(apiUser, recipient string) (Entry, bool)
	// ManualEntries are all of apiUser's that hold now.
	ManualEntries(apiUser string) []Entry
}

// SetManual makes the guard check m before the list; call it before the
// guard is used.
func (g *Guard) SetManual(m Manual) { g.manual = m }

// ErrManaged is a manual entry's: it is lifted by editing or deleting its
// SmtpSuppression, not through the API.
type ErrManaged struct{ Source string }

func (e *ErrManaged) Error() string {
	return "the entry is kept by SmtpSuppression " + e.Source + "; edit or delete that object to lift it"
}

func (g *Guard) manualEntry(apiUser, recipient string) (Entry, bool) {
	if g.manual == nil {
		return Entry{}, false
	}
	return g.manual.Manual(apiUser, recipient)
}

// Suppressed returns apiUser's entry for recipient when it is suppressed.
func (g *Guard) Suppressed(ctx context.Context, apiUser, recipient string) (Entry, bool) {
	if e, ok := g.manualEntry(apiUser, recipient); ok {
		g.checks.WithLabelValues("suppressed").Inc()
		return e, true
	}
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
	if e, ok := g.manualEntry(apiUser, recipient); ok {
		return e, true, nil
	}
	l := g.list.Load()
	if l == nil {
		return Entry{}, false, errNotOpen
	}
	return l.Lookup(ctx, apiUser, recipient)
}

// Remove lifts apiUser's suppression of recipient, for the HTTP API.
func (g *Guard) Remove(ctx context.Context, apiUser, recipient string) error {
	if e, ok := g.manualEntry(apiUser, recipient); ok {
		return &ErrManaged{Source: e.Source}
	}
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

// List is a page of apiUser's entries, for the HTTP API: its manual
// entries first, then the bounces the relays recorded, at most limit, and
// the cursor of the next page ("" after the last). cursor is "" or what
// the previous page returned.
func (g *Guard) List(ctx context.Context, apiUser, cursor string, limit int) ([]Entry, string, error) {
	phase, pos, err := parseCursor(cursor)
	if err != nil {
		return nil, "", err
	}
	var out []Entry
	if phase == cursorManual {
		var manual []Entry
		if g.manual != nil {
			manual = g.manual.ManualEntries(apiUser)
		}
		start := min(int(pos), len(manual))
		end := min(start+limit, len(manual))
		out = append(out, manual[start:end]...)
		if end < len(manual) {
			return out, formatCursor(cursorManual, uint64(end)), nil
		}
		phase, pos = cursorBounces, 0
	}
	l := g.list.Load()
	if l == nil || len(out) == limit {
		if l != nil {
			return out, formatCursor(cursorBounces, 0), nil
		}
		return out, "", nil
	}
	page, last, more, err := l.Page(ctx, apiUser, pos, limit-len(out))
	if err != nil {
		return nil, "", err
	}
	out = append(out, page...)
	if !more {
		return out, "", nil
	}
	return out, formatCursor(cursorBounces, last), nil
}

// A cursor is the phase (manual entries, then bounces) and the position in
// it, opaque to clients.
const (
	cursorManual  = 'm'
	cursorBounces = 'b'
)

// ErrBadCursor is a cursor no page returned.
var ErrBadCursor = errors.New("suppression: cursor is not one a page returned")

func formatCursor(phase byte, pos uint64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(string(phase) + strconv.FormatUint(pos, 10)))
}

func parseCursor(c string) (byte, uint64, error) {
	if c == "" {
		return cursorManual, 0, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(raw) < 2 || (raw[0] != cursorManual && raw[0] != cursorBounces) {
		return 0, 0, ErrBadCursor
	}
	pos, err := strconv.ParseUint(string(raw[1:]), 10, 64)
	if err != nil {
		return 0, 0, ErrBadCursor
	}
	return raw[0], pos, nil
}
