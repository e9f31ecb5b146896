package dispatch

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/relay/events"
	"github.com/mailfleet/mailfleet/relay/queue"
	"github.com/mailfleet/mailfleet/relay/suppression"
)

// withSuppressions gives a harness's dispatcher a real suppression list
// on its queue's JetStream.
func withSuppressions(t *testing.T, g **suppression.Guard) func(*Deps) {
	return func(d *Deps) {
		q := d.Queue.(*queue.Queue)
		l, err := suppression.Open(context.Background(), q.Conn(), q.Stream(), 1, 0)
		if err != nil {
			t.Fatal(err)
		}
		guard := suppression.NewGuard(nil, d.Log)
		guard.Attach(l)
		d.Suppressions, *g = guard, guard
	}
}

// TestHardBounceSuppresses: a remote 5.1.1 puts the address on the
// account's list; a message queued afterwards to it and to another
// address is sent to the other only, and the suppressed recipient gets a
// suppressed event, neither delivered nor bounced again.
func TestHardBounceSuppresses(t *testing.T) {
	var guard *suppression.Guard
	var prod *events.Producer
	h := start(t, Config{}, func(d *Deps) { withSuppressions(t, &guard)(d); withEvents(t, &prod)(d) })
	h.submit(t, env("first", "sender@acme.example", "gone@perm.example"), "Subject: 1\r\n\r\nhello\r\n")
	waitFor(t, "the address suppressed", 10*time.Second, func() bool {
		_, ok := guard.Suppressed(context.Background(), "acme", "GONE@perm.example")
		return ok
	})
	if _, ok := guard.Suppressed(context.Background(), "other-account", "gone@perm.example"); ok {
		t.Fatal("another account's mail to the address is suppressed too")
	}
	h.submit(t, env("second", "sender@acme.example", "gone@perm.example", "a@ok.example"), "Subject: 2\r\n\r\nhello\r\n")
	waitFor(t, "the second message finished", 10*time.Second, func() bool { return h.deliveries("suppressed") == 1 })
	for _, c := range h.transport.seen() {
		if c.env.ID == "second" && slices.Contains(c.env.To, "gone@perm.example") {
			t.Fatalf("the suppressed recipient was sent to: %+v", c.env)
		}
	}
	if h.deliveries("failed") != 1 {
		t.Fatalf("%v failed (bounced) recipients, want only the first message's", h.deliveries("failed"))
	}
	waitFor(t, "the suppressed event", 10*time.Second, func() bool {
		ev, ok := storedEvents(t, h.q)["gone@perm.example suppressed"]
		return ok && ev.QueueID == "second" && ev.Reply != nil && ev.Reply.Enhanced == "5.1.1"
	})
	waitFor(t, "an empty queue", 10*time.Second, func() bool { return depth(t, h.q) == 0 })
}

// TestOnlyAddressBouncesSuppress: only a remote server's refusal of the
// address counts; a refusal of the content or sender (5.7.x), a failure
// decided locally, or a temporary one does not.
func TestOnlyAddressBouncesSuppress(t *testing.T) {
	for _, tt := range []struct {
		code     int
		enhanced string
		want     bool
	}{
		{550, "5.1.1", true}, {550, "5.1.10", true}, {551, "5.1.6", true}, {550, "5.2.1", true},
		{550, "", true}, {553, "", true},
		{550, "5.7.1", false}, {554, "5.7.0", false}, {552, "5.2.2", false}, {554, "", false},
		{450, "4.1.1", false}, {421, "", false},
	} {
		if got := hardBounce(tt.code, tt.enhanced); got != tt.want {
			t.Errorf("hardBounce(%d, %q) = %v, want %v", tt.code, tt.enhanced, got, tt.want)
		}
	}
}
