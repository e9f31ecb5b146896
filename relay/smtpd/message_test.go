package smtpd_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/mailfleet/mailfleet/relay/smtpd"
)

func TestMessageSizeLimit(t *testing.T) {
	env := startRelay(t)
	c := dialRaw(t, env.addr("smtp"))
	c.login(userMain, env.keys[userMain])
	// A body of exactly n bytes: 100-byte lines, CRLF included.
	body := func(n int) string {
		line := strings.Repeat("a", 98) + "\r\n"
		full := n/100 - 1
		return strings.Repeat(line, full) + strings.Repeat("b", n-100*full-2) + "\r\n"
	}
	if got := c.send("a@ifaxin.com", "b@example.com", body(16_000_000)); !queuedReply.MatchString(got) {
		t.Fatalf("16,000,000 bytes: got %q, want it queued", got)
	}
	if got := c.send("a@ifaxin.com", "b@example.com", body(16_000_001)); got != "552 5.3.4 Message size exceeds fixed limit" {
		t.Fatalf("16,000,001 bytes: got %q", got)
	}
	// The session is still in step and usable.
	if got := c.send("a@ifaxin.com", "b@example.com", "Subject: small\r\n\r\nok\r\n"); !queuedReply.MatchString(got) {
		t.Fatalf("after a refused message: got %q", got)
	}
	stored := env.stored()
	sizes := map[int]int{}
	for _, m := range stored {
		sizes[len(m.Body)]++
	}
	if len(stored) != 2 || sizes[16_000_000] != 1 {
		t.Fatalf("stored %d messages with sizes %v; want the 16,000,000-byte one and the small one", len(stored), sizes)
	}
}

// TestSmuggling sends the known smuggling probes: each submission must stay
// exactly one message, with the would-be second message inside its body.
func TestSmuggling(t *testing.T) {
	probes := map[string]string{
		`\n.\n`:   "\n.\n",
		`\r.\r`:   "\r.\r",
		`\n.\r\n`: "\n.\r\n",
		`\r.\r\n`: "\r.\r\n",
		`\r\n.\r`: "\r\n.\r",
		`\r\n.\n`: "\r\n.\n",
	}
	for name, probe := range probes {
		t.Run(name, func(t *testing.T) {
			env := startRelay(t)
			c := dialRaw(t, env.addr("smtp"))
			c.login(userMain, env.keys[userMain])
			smuggled := "MAIL FROM:<admin@ifaxin.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n"
			got := c.send("a@ifaxin.com", "b@example.com", "Subject: real\r\n\r\nbody"+probe+smuggled)
			if !queuedReply.MatchString(got) {
				t.Fatalf("got %q", got)
			}
			c.expect("NOOP", "250 2.0.0 OK")
			stored := env.stored()
			if len(stored) != 1 {
				t.Fatalf("stored %d messages, want exactly 1", len(stored))
			}
			for _, m := range stored {
				if !bytes.Contains(m.Body, []byte("Subject: smuggled")) || m.Env.To[0] != "b@example.com" {
					t.Fatalf("the probe's text should be part of the one message: %q", m.Body)
				}
				smtpd.AssertCRLFOnly(t, m.Body)
			}
		})
	}
}

// TestMessageLineLimit: a message line over maxLineLength (CRLF excluded)
// refuses the message with 500 5.5.2, whether the line fits the session's
// read buffer or not; the body is read to its end, so the session goes on
// and its next message, with lines of exactly the limit, is queued.
func TestMessageLineLimit(t *testing.T) {
	env := startRelay(t, func(s *relaySpec) { s.server.MaxLineLength = 100 })
	c := dialRaw(t, env.addr("smtp"))
	c.login(userMain, env.keys[userMain])
	for _, n := range []int{101, 10_000} {
		got := c.send("a@ifaxin.com", "b@example.com", "Subject: long\r\n\r\n"+strings.Repeat("x", n)+"\r\nafter\r\n")
		if got != "500 5.5.2 Message line too long (limit 100 bytes)" {
			t.Fatalf("line of %d bytes: got %q", n, got)
		}
		if len(env.stored()) != 0 {
			t.Fatal("a refused message was spooled")
		}
	}
	if got := c.send("a@ifaxin.com", "b@example.com", "Subject: fits\r\n\r\n"+strings.Repeat("y", 100)+"\r\n"); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("after the refusals, a message with lines at the limit: got %q, want 250", got)
	}
	if len(env.stored()) != 1 {
		t.Fatalf("%d messages spooled, want the one that fits", len(env.stored()))
	}
}
