package smtpd_test

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/relay/budget"
)

func TestBudgetRefusesWithFrequencyLimited(t *testing.T) {
	env := startRelay(t)
	c := dialRaw(t, env.addr("smtp"))
	c.login(userTiny, env.keys[userTiny])
	for i := range 2 {
		if got := c.send("a@ifaxin.com", "b@example.com", "Subject: x\r\n\r\nok\r\n"); !queuedReply.MatchString(got) {
			t.Fatalf("message %d: %q", i+1, got)
		}
	}
	if got := c.send("a@ifaxin.com", "b@example.com", "Subject: x\r\n\r\nover\r\n"); got != "536 5.7.1 Frequency limited" {
		t.Fatalf("third message in the minute: got %q", got)
	}
	if n := len(env.stored()); n != 2 {
		t.Fatalf("spooled %d messages, want 2", n)
	}
	if got := env.metric("mailfleet_relay_messages_total", map[string]string{"account": userTiny, "label": "", "outcome": "rejected", "reason": "over_budget"}); got != 1 {
		t.Fatalf("over-budget metric = %v", got)
	}
}

// unavailableBudget is a budget whose shared counter cannot be reached, with
// the policy to deny.
type unavailableBudget struct{}

func (unavailableBudget) Take(context.Context, budget.Request) budget.Decision {
	return budget.Unavailable
}

func TestBudgetUnavailableIsTemporary(t *testing.T) {
	env := startRelay(t, withBudget(unavailableBudget{}))
	c := dialRaw(t, env.addr("smtp"))
	c.login(userMain, env.keys[userMain])
	if got := c.send("a@ifaxin.com", "b@example.com", "x\r\n"); got != "451 4.7.1 Frequency limit unavailable, try again later" {
		t.Fatalf("got %q", got)
	}
}

func TestAuthFailureThrottle(t *testing.T) {
	env := startRelay(t, func(s *relaySpec) { s.policy.AuthFailureLimit = 3 })
	bad := "AUTH PLAIN " + b64("\x00"+userMain+"\x00wrong")
	c := dialRaw(t, env.addr("smtp"))
	c.reply()
	c.cmd("EHLO client.test")
	for range 3 {
		c.expect(bad, "535 5.7.8 Authentication credentials invalid")
	}
	c.expect(bad, "421 4.7.0 mx.test Too many authentication failures, try again later")
	// A new connection from the same IP is shut out too, even with the right key.
	d := dialRaw(t, env.addr("smtp"))
	d.reply()
	d.cmd("EHLO client.test")
	d.expect("AUTH PLAIN "+b64("\x00"+userMain+"\x00"+env.keys[userMain]), "421 4.7.0 mx.test Too many authentication failures, try again later")
}

func TestConnectionCap(t *testing.T) {
	env := startRelay(t, func(s *relaySpec) { s.server.MaxConnections = 1 })
	first := dialRaw(t, env.addr("smtp"))
	first.reply()
	second := dialRaw(t, env.addr("smtp"))
	if got := second.reply(); got != "421 4.3.2 mx.test Too many connections, try again later" {
		t.Fatalf("got %q", got)
	}
	first.expect("NOOP", "250 2.0.0 OK")
}

func TestCommandTimeout(t *testing.T) {
	env := startRelay(t, func(s *relaySpec) { s.server.CommandTimeout = 200 * time.Millisecond })
	c := dialRaw(t, env.addr("smtp"))
	c.reply()
	if got := c.reply(); got != "421 4.4.2 mx.test Timeout exceeded, closing connection" {
		t.Fatalf("got %q", got)
	}
	if _, err := c.r.ReadByte(); err != io.EOF {
		t.Fatalf("connection not closed after the timeout: %v", err)
	}
}

func TestDataTimeoutAcknowledgesNothing(t *testing.T) {
	env := startRelay(t, func(s *relaySpec) { s.server.DataTimeout = 200 * time.Millisecond })
	c := dialRaw(t, env.addr("smtp"))
	c.login(userMain, env.keys[userMain])
	c.expectPrefix("MAIL FROM:<a@ifaxin.com>", "250")
	c.expectPrefix("RCPT TO:<b@example.com>", "250")
	c.expect("DATA", "354 go ahead")
	c.write("Subject: never finished\r\n")
	if got := c.reply(); got != "421 4.4.2 mx.test Timeout exceeded, closing connection" {
		t.Fatalf("got %q", got)
	}
	if n := len(env.stored()); n != 0 {
		t.Fatalf("%d messages spooled from an unfinished DATA", n)
	}
}

// TestPipelining sends a whole transaction in one write, as PIPELINING
// clients do, and gets every reply in order.
func TestPipelining(t *testing.T) {
	env := startRelay(t)
	c := dialRaw(t, env.addr("smtp"))
	c.reply()
	c.write("EHLO client.test\r\nAUTH PLAIN " + b64("\x00"+userMain+"\x00"+env.keys[userMain]) + "\r\n" +
		"MAIL FROM:<a@ifaxin.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
	want := []string{"250-mx.test Hello client.test", "235 2.7.0", "250 2.1.0", "250 2.1.5", "250 2.1.5", "354 go ahead"}
	for _, w := range want {
		if got := c.reply(); !strings.HasPrefix(got, w) {
			t.Fatalf("got %q, want %q", got, w)
		}
	}
	c.write("Subject: pipelined\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@ifaxin.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n")
	for _, w := range []string{"250 2.0.0 #", "250 2.1.0", "250 2.1.5", "354 go ahead"} {
		if got := c.reply(); !strings.HasPrefix(got, w) {
			t.Fatalf("got %q, want %q", got, w)
		}
	}
	c.write("second\r\n.\r\nQUIT\r\n")
	if got := c.reply(); !queuedReply.MatchString(got) {
		t.Fatalf("got %q", got)
	}
	if got := c.reply(); got != "221 2.0.0 mx.test closing connection" {
		t.Fatalf("got %q", got)
	}
	if n := len(env.stored()); n != 2 {
		t.Fatalf("stored %d, want 2", n)
	}
}

// TestDrain: a draining relay refuses new sessions, lets a message in
// progress finish, and tells a session between messages 421 at its next
// command, so a rollout waits for messages, not for idle clients.
func TestDrain(t *testing.T) {
	env := startRelay(t)
	busy := dialRaw(t, env.addr("smtp"))
	busy.login(userMain, env.keys[userMain])
	busy.expectPrefix("MAIL FROM:<a@ifaxin.com>", "250")
	idle := dialRaw(t, env.addr("smtp"))
	idle.login(userMain, env.keys[userMain])
	leaving := dialRaw(t, env.addr("smtp"))
	leaving.reply() // greeting
	leaving.expectPrefix("EHLO client.test", "250")

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- env.srv.Shutdown(ctx)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for env.srv.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("still ready after Shutdown began")
		}
		time.Sleep(5 * time.Millisecond)
	}
	const shuttingDown = "421 4.3.2 mx.test Service shutting down, try again later"
	// New sessions are told to go elsewhere.
	late := dialRaw(t, env.addr("smtp"))
	if got := late.reply(); got != shuttingDown {
		t.Fatalf("new session while draining: %q", got)
	}
	// A session between messages is sent elsewhere at its next command.
	idle.expect("MAIL FROM:<a@ifaxin.com>", shuttingDown)
	// QUIT is still answered as QUIT.
	leaving.expect("QUIT", "221 2.0.0 mx.test closing connection")
	// The message in progress is finished and acknowledged.
	busy.expectPrefix("RCPT TO:<b@example.com>", "250")
	busy.expect("DATA", "354 go ahead")
	busy.write("Subject: x\r\n\r\nduring drain\r\n.\r\n")
	if got := busy.reply(); !queuedReply.MatchString(got) {
		t.Fatalf("message in progress while draining: %q", got)
	}
	select {
	case <-done:
		t.Fatal("Shutdown returned while a session was open")
	case <-time.After(100 * time.Millisecond):
	}
	// Then that session too is sent elsewhere, and the drain ends.
	busy.expect("MAIL FROM:<a@ifaxin.com>", shuttingDown)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last session ended")
	}
	if n := len(env.stored()); n != 1 {
		t.Fatalf("stored %d messages, want the 1 acknowledged", n)
	}
}

func TestDrainGraceExpiry(t *testing.T) {
	env := startRelay(t)
	c := dialRaw(t, env.addr("smtp"))
	c.login(userMain, env.keys[userMain])
	c.expectPrefix("MAIL FROM:<a@ifaxin.com>", "250")
	c.expectPrefix("RCPT TO:<b@example.com>", "250")
	c.expect("DATA", "354 go ahead")
	c.write("Subject: cut off\r\n")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	env.srv.Shutdown(ctx)
	if got := c.reply(); got != "421 4.3.2 mx.test Service shutting down, try again later" {
		t.Fatalf("got %q", got)
	}
	if n := len(env.stored()); n != 0 {
		t.Fatalf("a message cut off by shutdown was spooled (%d)", n)
	}
}

func TestMetricsPerAccountAndLabel(t *testing.T) {
	env := startRelay(t)
	c := dialRaw(t, env.addr("smtp"))
	c.login(userMain+"#1001", env.keys[userMain])
	c.send("a@ifaxin.com", "b@example.com", "Subject: x\r\n\r\nbody\r\n")
	account := map[string]string{"account": userMain, "label": "1001"}
	if got := env.metric("mailfleet_relay_messages_total", map[string]string{"account": userMain, "label": "1001", "outcome": "accepted", "reason": ""}); got != 1 {
		t.Fatalf("accepted = %v", got)
	}
	if got := env.metric("mailfleet_relay_accepted_bytes_total", account); got != float64(len("Subject: x\r\n\r\nbody\r\n")) {
		t.Fatalf("bytes = %v", got)
	}
	if got := env.metric("mailfleet_relay_auth_total", map[string]string{"mechanism": "PLAIN", "result": "success"}); got != 1 {
		t.Fatalf("auth success = %v", got)
	}
	var out bytes.Buffer
	families, _ := env.reg.Gather()
	for _, f := range families {
		out.WriteString(f.String())
	}
	if !strings.Contains(out.String(), "mailfleet_relay_sessions_total") {
		t.Fatal("sessions metric missing")
	}
}
