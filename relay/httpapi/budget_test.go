package httpapi_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/ratelimit"
	"github.com/mailfleet/mailfleet/ratelimit/ratelimittest"
	"github.com/mailfleet/mailfleet/ratelimit/redistest"
	"github.com/mailfleet/mailfleet/relay/budget"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// TestSMTPAndAPIShareOneBudget mixes SMTP and API submissions of one
// account against the relay's real limiter (leases from the rate-limit
// sidecar, counted in Redis): the recipients admitted in the window add up
// to the budget exactly, whichever door they came through; past it SMTP
// answers 536 and the API 429 with Retry-After.
func TestSMTPAndAPIShareOneBudget(t *testing.T) {
	const window = 10 * time.Second
	rd := redistest.StartRedis(t)
	sc := ratelimittest.StartSidecar(t, rd.Addr, ratelimit.Options{Window: window, Deadline: time.Second})
	leased, err := budget.NewLeased(budget.LeasedOptions{SidecarOptions: budget.SidecarOptions{Address: sc.Addr, Timeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { leased.Close() })
	r := startRelay(t, withBudget(leased))
	smtp := dialSMTP(t, r)
	smtp.expect("AUTH PLAIN "+b64("\x00"+userTiny+"\x00"+r.keys[userTiny]), "235")

	// One door after the other, recipients 1 or 2 each, well past the
	// budget of 5. Should a slow machine let the window end mid-round, the
	// round is not judged and runs again in a fresh window.
	type try struct {
		api   bool
		rcpts int
	}
	round := []try{{false, 1}, {true, 2}, {false, 1}, {true, 1}, {false, 1}, {true, 1}, {false, 1}, {true, 1}, {false, 2}, {true, 2}}
	var admitted, queuedTotal int
	var outcomes []string
	for attempt := 0; ; attempt++ {
		redistest.WaitForTimeLeft(window, 5*time.Second)
		start := time.Now()
		admitted, outcomes = 0, nil
		for i, tr := range round {
			ok, outcome := sendOne(t, r, smtp, tr.api, tr.rcpts, i)
			outcomes = append(outcomes, outcome)
			if ok {
				admitted += tr.rcpts
				queuedTotal++
			}
		}
		if redistest.WindowOf(start, window) == redistest.WindowOf(time.Now(), window) {
			break
		}
		if attempt == 2 {
			t.Fatal("the machine is too slow to send ten messages in one 10 s window")
		}
	}
	if admitted != tinyLimit {
		t.Fatalf("admitted %d recipients in one window, want the budget %d exactly: %v", admitted, tinyLimit, outcomes)
	}
	for _, want := range []string{"smtp 536", "api 429"} {
		if !slices.Contains(outcomes, want) {
			t.Fatalf("no %s among %v", want, outcomes)
		}
	}
	if n := len(r.stored()); n != queuedTotal {
		t.Fatalf("%d messages queued, %d acknowledged", n, queuedTotal)
	}
}

// sendOne submits one message with rcpts recipients through a door and
// reports whether it was queued, and the answer ("smtp 250", "api 429").
func sendOne(t *testing.T, r *relay, smtp *smtpClient, api bool, rcpts, n int) (bool, string) {
	t.Helper()
	to := make([]string, rcpts)
	for i := range to {
		to[i] = fmt.Sprintf("r%d-%d@example.com", n, i)
	}
	if !api {
		reply := smtp.send("a@tiny.example", to, "From: a@tiny.example\r\nSubject: smtp\r\n\r\nhello")
		if reply[:3] == "536" && reply != "536 5.7.1 Frequency limited" {
			t.Fatalf("SMTP over budget: %q", reply)
		}
		return reply[:3] == "250", "smtp " + reply[:3]
	}
	a := r.postJSON(userTiny, map[string]any{"from": "a@tiny.example", "to": to, "text": "hello"})
	switch a.status {
	case 200:
		a.messageID(t)
	case 429:
		r.expectError(a, 429, "frequency_limited")
		if s, err := strconv.Atoi(a.header.Get("Retry-After")); err != nil || s < 1 || s > 60 {
			t.Fatalf("Retry-After %q, want 1 to 60 seconds", a.header.Get("Retry-After"))
		}
	default:
		t.Fatalf("API: %d %s", a.status, a.body)
	}
	return a.status == 200, "api " + strconv.Itoa(a.status)
}

// unavailableBudget is a limiter that cannot decide (the sidecar down
// with failureMode deny).
type unavailableBudget struct{}

func (unavailableBudget) Take(context.Context, budget.Request) budget.Decision {
	return budget.Unavailable
}

// TestBudgetAndQueueDown: what cannot be decided or kept is a 503 the
// client may retry, never a 200 and never a 429.
func TestBudgetAndQueueDown(t *testing.T) {
	r := startRelay(t, withBudget(unavailableBudget{}))
	a := r.postJSON(userCorp, valid())
	r.expectError(a, 503, "budget_unavailable")
	if a.header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}

	r = startRelay(t, withSpool(downSpool{}))
	r.expectError(r.postJSON(userCorp, valid()), 503, "queue_unavailable")
}

// downSpool is a queue out of reach (NATS down).
type downSpool struct{}

func (downSpool) Begin(context.Context, spool.Envelope) (spool.Writer, error) {
	return nil, errors.New("nats: no servers available")
}
