package submission

import (
	"fmt"
	"testing"
	"time"
)

func TestAuthThrottleWindowExpires(t *testing.T) {
	th := newAuthThrottle(2, time.Minute)
	now := time.Unix(1000, 0)
	th.now = func() time.Time { return now }
	fail := func(ip string) {
		a, ok := th.begin(ip)
		if !ok {
			t.Fatalf("%s refused before its limit", ip)
		}
		a.failed()
	}
	fail("192.0.2.1")
	fail("192.0.2.1")
	if _, ok := th.begin("192.0.2.1"); ok {
		t.Fatal("192.0.2.1 not refused after 2 failures")
	}
	if a, ok := th.begin("192.0.2.2"); !ok {
		t.Fatal("192.0.2.2 refused for 192.0.2.1's failures")
	} else {
		a.abandoned()
	}
	now = now.Add(time.Minute)
	a, ok := th.begin("192.0.2.1")
	if !ok {
		t.Fatal("still refused after the window")
	}
	a.abandoned()
	now = now.Add(time.Minute)
	fail("192.0.2.3") // sweeps expired entries
	if _, ok := th.entries["192.0.2.1"]; ok {
		t.Fatal("expired entry not swept")
	}
}

// TestOwnLoginDoesNotForgiveGuesses: a tenant guessing another account's
// key from one address, and logging in with its own key between guesses,
// is shut out at the limit all the same. Before, any login forgave every
// failure of the address. A client that mistyped its own key and then
// got it right is still forgiven.
func TestOwnLoginDoesNotForgiveGuesses(t *testing.T) {
	th := newLoginThrottle(3, time.Minute)
	try := loginFrom(th, "192.0.2.9")
	try("acme", false)
	try("acme#7", false)
	try("acme", true) // acme's own mistakes forgiven
	guesses := 0
	for range 10 {
		if !try("victim", false) {
			break
		}
		guesses++
		try("evil", true)
	}
	if guesses != 3 {
		t.Fatalf("%d guesses at victim's key, logging in as evil between them; want the limit, 3", guesses)
	}
}

// TestAFailingClientDoesNotShutOutItsNAT: behind one address (a node's,
// for traffic through a LoadBalancer Service), a client that keeps
// failing is shut out at its own limit and its neighbours still log in;
// guessing across many api_users ends at ten times the limit.
func TestAFailingClientDoesNotShutOutItsNAT(t *testing.T) {
	th := newLoginThrottle(3, time.Minute)
	try := loginFrom(th, "198.51.100.1")
	for range 100 {
		try("broken", false)
	}
	if !try("neighbour", true) {
		t.Fatal("a neighbour behind the same address was shut out by a failing client")
	}
	failures := 0
	for i := range 100 {
		if try(fmt.Sprintf("user%d", i), false) {
			failures++
		}
	}
	if failures != addressShare*3-3 {
		t.Fatalf("%d failures across api_users after the broken client's 3; want %d", failures, addressShare*3-3)
	}
	if try("neighbour", true) {
		t.Fatal("an address that guessed across api_users is still open")
	}
}

// loginFrom tries logins from ip; it reports whether the throttle let
// the attempt be made.
func loginFrom(th *loginThrottle, ip string) func(username string, ok bool) bool {
	return func(username string, ok bool) bool {
		a, open := th.begin(ip, username)
		if !open {
			return false
		}
		if ok {
			a.succeeded()
		} else {
			a.failed()
		}
		return true
	}
}
