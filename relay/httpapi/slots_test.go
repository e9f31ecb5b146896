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
	s := newSlots(16, 3*largest, largest)
	var releases []func()
	for _, account := range []string{"a", "b", "c"} {
		release, err := s.take(context.Background(), account, largest)
		if err != nil {
			t.Fatalf("%s: %v", account, err)
		}
		releases = append(releases, release)
	}
	if _, err := s.take(context.Background(), "a", minRequestBytes); !errors.Is(err, errAccountBusy) {
		t.Fatalf("an account holding a request of the largest size took more: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.take(ctx, "d", largest); !errors.Is(err, errNoSlot) {
		t.Fatalf("a fourth request of the largest size was let in: %v", err)
	}
	releases[0]()
	release, err := s.take(context.Background(), "d", largest)
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
