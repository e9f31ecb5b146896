package suppression

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailfleet/mailfleet/relay/queue"
)

func openList(t testing.TB) (*List, *queue.Queue) {
	t.Helper()
	q, err := queue.Open(context.Background(), queue.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	l, err := Open(context.Background(), q.Conn(), q.Stream(), 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	return l, q
}

// TestListPerAccount: an entry is the account's own, found whatever the
// address's case, and gone once removed.
func TestListPerAccount(t *testing.T) {
	l, _ := openList(t)
	ctx := context.Background()
	at := time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC)
	if err := l.Add(ctx, "acme", Entry{Recipient: "Gone@Example.com", Reason: ReasonBounce, QueueID: "q1", DSNStatus: "5.1.1", At: at}); err != nil {
		t.Fatal(err)
	}
	e, found, err := l.Lookup(ctx, "acme", "gone@example.COM")
	if err != nil || !found || e.QueueID != "q1" || !e.At.Equal(at) {
		t.Fatalf("lookup: %+v %v %v", e, found, err)
	}
	if _, found, _ := l.Lookup(ctx, "acme2", "gone@example.com"); found {
		t.Fatal("another account sees the entry")
	}
	if err := l.Remove(ctx, "acme", "GONE@example.com"); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := l.Lookup(ctx, "acme", "gone@example.com"); found {
		t.Fatal("found after Remove")
	}
	if err := l.Remove(ctx, "acme", "never@example.com"); err != nil {
		t.Fatalf("removing what is not there: %v", err)
	}
}

// TestKeysAreSafe: api_users and addresses with characters a key may not
// hold (dots at the ends, '@', '+', spaces in a quoted local part) give
// valid, distinct keys.
func TestKeysAreSafe(t *testing.T) {
	l, _ := openList(t)
	ctx := context.Background()
	for _, c := range [][2]string{{"acme.", "a+b@example.com"}, {"a..b", `"john doe"@example.com`}, {".", "x@[192.0.2.1]"}} {
		if err := l.Add(ctx, c[0], Entry{Recipient: c[1], Reason: ReasonBounce}); err != nil {
			t.Fatalf("%q %q: %v", c[0], c[1], err)
		}
		if _, found, err := l.Lookup(ctx, c[0], c[1]); !found || err != nil {
			t.Fatalf("%q %q: %v %v", c[0], c[1], found, err)
		}
	}
	if Key("a", "b@c") == Key("a", "b@d") || Key("ab", "c@d") == Key("a", "bc@d") {
		t.Fatal("keys collide")
	}
}

// TestGuardLetsThroughWithoutAList: before its list is attached, and when
// the list does not answer, the guard suppresses nothing and counts it.
func TestGuardLetsThroughWithoutAList(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := NewGuard(reg, slog.New(slog.DiscardHandler))
	if _, ok := g.Suppressed(context.Background(), "acme", "a@example.com"); ok {
		t.Fatal("suppressed without a list")
	}
	g.Bounced(context.Background(), "acme", Entry{Recipient: "a@example.com"}) // dropped, logged
	l, q := openList(t)
	g.Attach(l)
	g.Bounced(context.Background(), "acme", Entry{Recipient: "a@example.com", Reason: ReasonBounce})
	if _, ok := g.Suppressed(context.Background(), "acme", "a@example.com"); !ok {
		t.Fatal("not suppressed once attached")
	}
	q.Close()
	if _, ok := g.Suppressed(context.Background(), "acme", "a@example.com"); ok {
		t.Fatal("suppressed while the list cannot be read")
	}
	if n := testutil.ToFloat64(g.checks.WithLabelValues("error")); n != 2 {
		t.Fatalf("%v checks counted as errors, want 2", n)
	}
}

// TestWatchedListAnswersFromMemory: with its watch caught up, a list knows
// a recipient that is not suppressed without a round trip (Lookup answers
// from absent), an entry another relay writes reaches it, and so does a
// removal.
func TestWatchedListAnswersFromMemory(t *testing.T) {
	l, q := openList(t)
	other, err := Open(context.Background(), q.Conn(), q.Stream(), 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Watch(ctx, slog.New(slog.DiscardHandler))
	if err := other.Add(ctx, "acme", Entry{Recipient: "gone@example.com", Reason: ReasonBounce, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, found, err := l.Lookup(ctx, "acme", "gone@example.com")
		if err == nil && found && l.keys.absent(Key("acme", "else@example.com"), l.ttl, time.Now()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watch did not catch up with another relay's entry")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := other.Remove(ctx, "acme", "gone@example.com"); err != nil {
		t.Fatal(err)
	}
	for !l.keys.absent(Key("acme", "gone@example.com"), l.ttl, time.Now()) {
		if time.Now().After(deadline) {
			t.Fatal("the watch did not see the removal")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// An entry older than the list's time to live is gone from the bucket
	// without a word to watchers, and so from memory.
	l.keys.mu.Lock()
	l.keys.written["old"] = time.Now().Add(-2 * DefaultTTL)
	l.keys.mu.Unlock()
	if !l.keys.absent("old", DefaultTTL, time.Now()) {
		t.Fatal("an expired key still counts")
	}
}
