package smtpd_test

import (
	"strings"
	"sync"
	"testing"
)

// Attack (issue 12.1): many sessions from one address start AUTH at once,
// so each passes the failure check before any failure is recorded, and the
// address gets one guess per session instead of AuthFailureLimit. AUTH LOGIN
// makes the race certain: every session is past its 334s before the first
// key is sent, and then all keys arrive together. A failure is reserved
// around each key check, atomically with the count, so at most the limit
// are checked and the rest get 421.
func TestAttackParallelAuthGuesses(t *testing.T) {
	const limit, sessions = 3, 12
	env := startRelay(t, func(s *relaySpec) { s.policy.AuthFailureLimit = limit })
	replies := loginTogether(t, env, sessions, "wrong-key")
	guesses, throttled := 0, 0
	for _, got := range replies {
		switch got {
		case "535 5.7.8 Authentication credentials invalid":
			guesses++
		case "421 4.7.0 mx.test Too many authentication failures, try again later":
			throttled++
		default:
			t.Fatalf("a parallel guess got %q", got)
		}
	}
	if guesses != limit || throttled != sessions-limit {
		t.Fatalf("%d parallel sessions from one address: %d keys checked and %d throttled, want %d checked",
			sessions, guesses, throttled, limit)
	}
	late := dialRaw(t, env.addr("smtp"))
	late.reply()
	late.expectPrefix("EHLO client.test", "250")
	late.expect("AUTH PLAIN "+b64("\x00"+userMain+"\x00wrong"), "421 4.7.0 mx.test Too many authentication failures, try again later")
}

// A client's pool of sessions logging in at once, more of them than the
// failure limit, all get in: attempts under way wait for each other's key
// check instead of counting as failures (BenchmarkSubmit's parallel
// sessions found the relay refusing right keys with 421).
func TestAuthPoolLogsInAtOnce(t *testing.T) {
	const limit, sessions = 3, 12
	env := startRelay(t, func(s *relaySpec) { s.policy.AuthFailureLimit = limit })
	for i, got := range loginTogether(t, env, sessions, env.keys[userMain]) {
		if got != "235 2.7.0 Authentication successful" {
			t.Errorf("session %d of a pool with the right key: %q", i, got)
		}
	}
}

// loginTogether starts AUTH LOGIN in n sessions from one address, sends
// the user name in each, then sends key in all of them at once and
// returns the replies.
func loginTogether(t *testing.T, env *relayEnv, n int, key string) []string {
	t.Helper()
	clients := make([]*rawClient, n)
	for i := range clients {
		c := dialRaw(t, env.addr("smtp"))
		c.reply()
		c.expectPrefix("EHLO client.test", "250")
		c.expectPrefix("AUTH LOGIN", "334 ")
		c.expectPrefix(b64(userMain), "334 ")
		clients[i] = c
	}
	replies := make([]string, n)
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() { replies[i] = c.cmd(b64(key)) })
	}
	wg.Wait()
	return replies
}

// A successful login forgives its address's failures, so one client behind
// a NAT that keeps failing does not lock out another that has the key
// (issue 12.5); a cancelled exchange checks no key and costs nothing.
func TestAuthSuccessForgivesAddress(t *testing.T) {
	env := startRelay(t, func(s *relaySpec) { s.policy.AuthFailureLimit = 3 })
	bad := "AUTH PLAIN " + b64("\x00"+userMain+"\x00wrong")
	c := dialRaw(t, env.addr("smtp"))
	c.reply()
	c.expectPrefix("EHLO client.test", "250")
	c.expect(bad, "535 5.7.8 Authentication credentials invalid")
	c.expect(bad, "535 5.7.8 Authentication credentials invalid")
	for range 5 {
		c.expectPrefix("AUTH LOGIN", "334 ")
		c.expect("*", "501 5.7.0 Authentication cancelled")
	}
	good := dialRaw(t, env.addr("smtp"))
	good.login(userMain, env.keys[userMain])
	// Forgiven: three more failures before the address is shut out.
	for range 3 {
		c.expect(bad, "535 5.7.8 Authentication credentials invalid")
	}
	c.expect(bad, "421 4.7.0 mx.test Too many authentication failures, try again later")
}

// Attack (issue 12.4): a client, or a network neighbour replaying what it
// sniffed, sends AUTH before STARTTLS. A listener with no setting (here
// "submission"; every default listener renders that way) neither offers
// AUTH nor checks a key sent in clear: a right key gets 530 like a wrong one.
func TestAttackClearTextAuth(t *testing.T) {
	env := startRelay(t)
	c := dialRaw(t, env.addr("submission"))
	c.reply()
	if ehlo := c.cmd("EHLO client.test"); strings.Contains(ehlo, "AUTH") {
		t.Fatalf("AUTH offered before TLS: %q", ehlo)
	}
	for _, line := range []string{
		"AUTH PLAIN " + b64("\x00"+userMain+"\x00"+env.keys[userMain]),
		"AUTH LOGIN " + b64(userMain),
	} {
		c.expect(line, "530 5.7.0 Must issue a STARTTLS command first")
	}
	c.expectPrefix("MAIL FROM:<a@ifaxin.com>", "530 ")
}

// Attack (issue 12.5): one address opens sessions until the relay has none
// left for anyone else, or opens connections as fast as it can. Each
// address gets MaxConnectionsPerClient open sessions and, when set,
// ConnectionRatePerClient new connections a minute; beyond, 421 4.7.0.
func TestAttackOneClientTakesEverySession(t *testing.T) {
	env := startRelay(t, func(s *relaySpec) { s.server.MaxConnectionsPerClient = 2 })
	for range 2 {
		dialRaw(t, env.addr("smtp")).reply()
	}
	over := dialRaw(t, env.addr("smtp"))
	if got := over.reply(); got != "421 4.7.0 mx.test Too many connections from your address, try again later" {
		t.Fatalf("third session from one address: %q", got)
	}
}

func TestClientConnectionRate(t *testing.T) {
	env := startRelay(t, func(s *relaySpec) { s.server.ConnectionRatePerClient = 3 })
	for range 3 {
		c := dialRaw(t, env.addr("smtp"))
		c.reply()
		c.expect("QUIT", "221 2.0.0 mx.test closing connection")
	}
	if got := dialRaw(t, env.addr("smtp")).reply(); got != "421 4.7.0 mx.test Too many connections from your address in the last minute, try again later" {
		t.Fatalf("fourth connection in a minute: %q", got)
	}
}
