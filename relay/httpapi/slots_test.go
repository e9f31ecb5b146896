package httpapi

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestSlotsBoundTheBytesInFlight: requests hold the bytes they declare.
// Three accounts each sending a request of the largest size take every
// byte, and a fourth waits, however few requests are under way; one
// account never holds more than its share. Before, slots counted requests
// only, and sixteen 16 MB uploads (about 1.5 GB once decoded and built)
// were read at once.
func TestSlotsBoundTheBytesInFlight(t *testing.T) {
	const largest = 16_000_000
	const short = 50 * time.Millisecond
	s := newSlots(16, 3*largest, largest)
	var releases []func()
	for _, account := range []string{"a", "b", "c"} {
		release, err := s.take(context.Background(), account, largest, short)
		if err != nil {
			t.Fatalf("%s: %v", account, err)
		}
		releases = append(releases, release)
	}
	if _, err := s.take(context.Background(), "a", minRequestBytes, short); !errors.Is(err, errAccountBusy) {
		t.Fatalf("an account holding a request of the largest size took more: %v", err)
	}
	if _, err := s.take(context.Background(), "d", largest, short); !errors.Is(err, errNoSlot) {
		t.Fatalf("a fourth request of the largest size was let in: %v", err)
	}
	releases[0]()
	release, err := s.take(context.Background(), "d", largest, short)
	if err != nil {
		t.Fatalf("once bytes came free: %v", err)
	}
	release()
	for _, r := range releases[1:] {
		r()
	}
	if len(s.held) != 0 || len(s.all) != 0 {
		t.Fatalf("held after every release: %v, %d slots", s.held, len(s.all))
	}
}

// TestAnAccountWaitsForItsShare: a request beyond the account's share is
// not refused at once but served when one of the account's own requests
// finishes, so a client sending with more workers than its share is served
// in turn (BenchmarkSubmit's eight workers of one account got 503s).
func TestAnAccountWaitsForItsShare(t *testing.T) {
	s := newSlots(4, 1<<30, 1<<20) // one request per account
	first, err := s.take(context.Background(), "a", minRequestBytes, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		release, err := s.take(context.Background(), "a", minRequestBytes, 10*time.Second)
		if err == nil {
			release()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("served beyond its share: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	first()
	if err := <-got; err != nil {
		t.Fatalf("once the account's first request finished: %v", err)
	}
}
