// Package budget decides whether an account may submit one more message in the
// current minute. The relay asks once per message, before it answers 250.
package budget

import (
	"context"
	"sync"
	"time"
)

// Decision is a budget's answer.
type Decision int

const (
	// Allow admits the message and counts it.
	Allow Decision = iota
	// OverLimit refuses it: the account used its budget for this minute.
	OverLimit
	// Unavailable refuses it because the budget could not be decided (the
	// shared counter is unreachable and the policy is to deny). The client
	// should try again later; it is not over budget.
	Unavailable
)

func (d Decision) String() string {
	switch d {
	case Allow:
		return "allow"
	case OverLimit:
		return "over_limit"
	default:
		return "unavailable"
	}
}

// Request names what is being counted.
type Request struct {
	APIUser string
	LabelID string
	// Limit is the account's budget per minute.
	Limit int
	// Hits is what this message spends: one unit per recipient, as the
	// services whose contract mailfleet speaks count them, so one message to
	// a thousand recipients is not one unit. 0 counts as 1.
	Hits int
}

// hits is the request's spend, at least 1.
func (r Request) hits() int { return max(r.Hits, 1) }

// Budget is asked once per message.
type Budget interface {
	Take(ctx context.Context, req Request) Decision
}

// FixedWindow is an in-process budget: a counter per api_user per calendar
// minute. It holds for one process only (dev mode, tests); a fleet shares its
// counters through the rate-limit sidecar instead.
type FixedWindow struct {
	mu     sync.Mutex
	window int64 // unix minute the counts belong to
	counts map[string]int
	now    func() time.Time
}

// NewFixedWindow returns an empty in-process budget.
func NewFixedWindow() *FixedWindow {
	return &FixedWindow{counts: map[string]int{}, now: time.Now}
}

// Take counts one call unless the account is at its limit; refused calls are
// not counted, so a client hammering over budget cannot push the next minute's
// admission further out.
func (f *FixedWindow) Take(_ context.Context, req Request) Decision {
	minute := f.now().Unix() / 60
	f.mu.Lock()
	defer f.mu.Unlock()
	if minute != f.window {
		f.window = minute
		clear(f.counts)
	}
	if req.Limit <= 0 || f.counts[req.APIUser]+req.hits() > req.Limit {
		return OverLimit
	}
	f.counts[req.APIUser] += req.hits()
	return Allow
}

// PodShare divides every budget evenly among Pods relay processes that each
// count on their own: a fleet without the rate-limit sidecar still admits
// about an account's budget in all, provided its Service spreads
// connections evenly. Each share rounds up, so a small budget never becomes
// zero.
type PodShare struct {
	Budget Budget
	Pods   int
}

// Take asks the wrapped budget with this process's share of the limit.
func (p PodShare) Take(ctx context.Context, req Request) Decision {
	if p.Pods > 1 && req.Limit > 0 {
		req.Limit = (req.Limit + p.Pods - 1) / p.Pods
	}
	return p.Budget.Take(ctx, req)
}
