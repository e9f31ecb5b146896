package smtpd

import (
	"testing"
	"time"
)

func TestAnvilForgetsAndFrees(t *testing.T) {
	a := newAnvil(1, 2)
	now := time.Unix(1000, 0)
	a.now = func() time.Time { return now }
	if r := a.connect("192.0.2.1"); r != "" {
		t.Fatalf("first: %q", r)
	}
	if r := a.connect("192.0.2.1"); r != anvilTooMany {
		t.Fatalf("second open: %q, want %s", r, anvilTooMany)
	}
	a.disconnect("192.0.2.1")
	if r := a.connect("192.0.2.1"); r != anvilTooFast {
		t.Fatalf("third in the minute: %q, want %s", r, anvilTooFast)
	}
	now = now.Add(time.Minute)
	if r := a.connect("192.0.2.1"); r != "" {
		t.Fatalf("after the window: %q", r)
	}
	a.disconnect("192.0.2.1")
	now = now.Add(2 * time.Minute)
	a.connect("192.0.2.2") // sweeps
	if _, ok := a.clients["192.0.2.1"]; ok {
		t.Fatal("an idle address was not forgotten")
	}
}
