package submission

import (
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
