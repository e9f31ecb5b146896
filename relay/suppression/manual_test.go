package suppression

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// manualList is an account's SmtpSuppressions' entries, as the relay's
// credentials carry them.
type manualList map[string][]Entry

func (m manualList) Manual(apiUser, recipient string) (Entry, bool) {
	for _, e := range m[apiUser] {
		if e.Recipient == strings.ToLower(recipient) {
			return e, true
		}
	}
	return Entry{}, false
}

func (m manualList) ManualEntries(apiUser string) []Entry { return m[apiUser] }

// TestManualEntries: an SmtpSuppression's entry suppresses its account's
// recipient (and no other account's), whether JetStream answers or not,
// and is not lifted through the API.
func TestManualEntries(t *testing.T) {
	g := NewGuard(prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	g.SetManual(manualList{"acme": {{Recipient: "ceo@example.com", Reason: ReasonManual, Source: "shop/vip", Note: "asked by phone"}}})
	ctx := context.Background()
	if e, ok := g.Suppressed(ctx, "acme", "CEO@example.com"); !ok || e.Source != "shop/vip" {
		t.Fatalf("without a list attached: %+v %v", e, ok)
	}
	if _, ok := g.Suppressed(ctx, "other", "ceo@example.com"); ok {
		t.Fatal("another account's recipient is suppressed")
	}
	var managed *ErrManaged
	if err := g.Remove(ctx, "acme", "ceo@example.com"); !errors.As(err, &managed) || managed.Source != "shop/vip" {
		t.Fatalf("Remove of a manual entry: %v", err)
	}
}

// TestListPages: the account's manual entries, then its bounces, a page at
// a time; a page reads at most its size; another account's are never
// listed; a made-up cursor is refused.
func TestListPages(t *testing.T) {
	l, _ := openList(t)
	ctx := context.Background()
	g := NewGuard(prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	g.Attach(l)
	manual := manualList{}
	for i := range 3 {
		manual["acme"] = append(manual["acme"], Entry{Recipient: fmt.Sprintf("m%d@example.com", i), Reason: ReasonManual, Source: "shop/list"})
	}
	g.SetManual(manual)
	for i := range 7 {
		if err := l.Add(ctx, "acme", Entry{Recipient: fmt.Sprintf("b%d@example.com", i), Reason: ReasonBounce, At: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if err := l.Add(ctx, "other", Entry{Recipient: fmt.Sprintf("x%d@example.com", i), Reason: ReasonBounce, At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	cursor, pages := "", 0
	for {
		page, next, err := g.List(ctx, "acme", cursor, 4)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 4 {
			t.Fatalf("a page of %d, want at most 4", len(page))
		}
		for _, e := range page {
			got = append(got, e.Recipient)
		}
		pages++
		if next == "" {
			break
		}
		cursor = next
	}
	want := "m0 m1 m2 b0 b1 b2 b3 b4 b5 b6"
	if strings.Join(got, " ") != strings.ReplaceAll(want, " ", "@example.com ")+"@example.com" || pages > 4 {
		t.Fatalf("listed %v in %d pages", got, pages)
	}
	if _, _, err := g.List(ctx, "acme", "bm90LWEtY3Vyc29y", 4); !errors.Is(err, ErrBadCursor) {
		t.Fatalf("a made-up cursor: %v", err)
	}
}
