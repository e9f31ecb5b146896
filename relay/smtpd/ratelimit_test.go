package smtpd_test

import (
	"strings"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/ratelimit"
	"github.com/mailfleet/mailfleet/ratelimit/ratelimittest"
	"github.com/mailfleet/mailfleet/ratelimit/redistest"
	"github.com/mailfleet/mailfleet/relay/budget"
)

// withSidecar makes the relay count budgets through the rate-limit sidecar
// at addr, as a relay pod does.
func withSidecar(t *testing.T, addr string) relayOption {
	s, err := budget.NewSidecar(budget.SidecarOptions{Address: addr, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return withBudget(s)
}

const frequencyLimited = "536 5.7.1 Frequency limited"

// TestFleetBudgetThroughSidecars runs two relays, each with its own sidecar,
// both counting in one Redis, as two relay pods do. The tiny account's
// budget (2 per window) holds across both: exactly two messages are queued
// in the window, whichever relay takes them, then both answer 536; in the
// next window the account is accepted again.
func TestFleetBudgetThroughSidecars(t *testing.T) {
	const window = 2 * time.Second
	r := redistest.StartRedis(t)
	var relays []*relayEnv
	var clients []*rawClient
	for range 2 {
		sc := ratelimittest.StartSidecar(t, r.Addr, ratelimit.Options{Window: window, Deadline: time.Second})
		env := startRelay(t, withSidecar(t, sc.Addr))
		c := dialRaw(t, env.addr("smtp"))
		c.login(userTiny, env.keys[userTiny])
		relays = append(relays, env)
		clients = append(clients, c)
	}
	queued := 0
	send := func(c *rawClient) string {
		got := c.send("a@ifaxin.com", "b@example.com", "Subject: budget\r\n\r\nhello\r\n")
		if queuedReply.MatchString(got) {
			queued++
		}
		return got
	}

	// Four messages, alternating relays, early in one window. The window is
	// short so the test can reach the next one; should a very slow machine
	// let it end before the four are through, the round is not judged and
	// runs again in the next window.
	var replies []string
	var start time.Time
	for attempt := 0; ; attempt++ {
		start = redistest.WaitWindowStart(window)
		replies = nil
		for i := range 4 {
			replies = append(replies, send(clients[i%2]))
		}
		if time.Since(start) < window-100*time.Millisecond {
			break
		}
		if attempt == 2 {
			t.Fatal("the machine is too slow to send four messages in a 2 s window")
		}
	}
	for i, got := range replies {
		if i < 2 && !queuedReply.MatchString(got) {
			t.Fatalf("message %d (relay %d): %q, want queued", i+1, i%2, got)
		}
		if i >= 2 && got != frequencyLimited {
			t.Fatalf("message %d (relay %d) over the fleet's budget: %q, want %q", i+1, i%2, got, frequencyLimited)
		}
	}

	// Refused messages are not counted, so polling does not push the next
	// window's admission out; the first message of the next window is queued.
	deadline := start.Add(3 * window)
	for {
		got := send(clients[0])
		if queuedReply.MatchString(got) {
			if time.Now().Before(start.Add(window)) {
				t.Fatalf("queued %q while the window was still exhausted", got)
			}
			break
		}
		if got != frequencyLimited {
			t.Fatalf("waiting for the next window: %q", got)
		}
		if time.Now().After(deadline) {
			t.Fatal("not accepted again in the next window")
		}
		time.Sleep(50 * time.Millisecond)
	}
	stored := 0
	for _, env := range relays {
		stored += len(env.stored())
	}
	if stored != queued {
		t.Fatalf("%d messages spooled across the relays, %d queued: a refused one was kept", stored, queued)
	}
}

// TestSidecarFailureModeOverSMTP: with Redis gone, failure mode deny makes
// the relay answer 451 4.7.1 (try again later), never 536; allow lets the
// message through on the pod's fallback budget.
func TestSidecarFailureModeOverSMTP(t *testing.T) {
	tests := []struct {
		mode ratelimit.FailureMode
		want string
	}{
		{ratelimit.FailureDeny, "451 4.7.1 Frequency limit unavailable, try again later"},
		{ratelimit.FailureAllow, "250 2.0.0 #"},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			r := redistest.StartRedis(t)
			// Redis's deadline is generous: with the default 50 ms, a
			// loaded machine made the first decision, with Redis up, a
			// failure (451 in deny mode). A killed Redis refuses at once.
			sc := ratelimittest.StartSidecar(t, r.Addr, ratelimit.Options{FailureMode: tt.mode, Deadline: 5 * time.Second})
			env := startRelay(t, withSidecar(t, sc.Addr))
			c := dialRaw(t, env.addr("smtp"))
			c.login(userMain, env.keys[userMain])
			if got := c.send("a@ifaxin.com", "b@example.com", "x\r\n"); !queuedReply.MatchString(got) {
				t.Fatalf("Redis up: %q", got)
			}
			r.Kill()
			if got := c.send("a@ifaxin.com", "b@example.com", "x\r\n"); !strings.HasPrefix(got, tt.want) {
				t.Fatalf("Redis down, failure mode %s: %q, want %q", tt.mode, got, tt.want)
			}
		})
	}
}
