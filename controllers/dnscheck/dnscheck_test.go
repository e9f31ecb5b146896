package dnscheck

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/mailfleet/mailfleet/internal/dnstest"
)

func TestLookupTXT(t *testing.T) {
	srv := dnstest.Start(t)
	r := &Servers{Addrs: []string{srv.Addr}}
	ctx := context.Background()
	long := "v=DKIM1; k=rsa; p=" + strings.Repeat("A", 400)
	srv.SetTXT("s._domainkey.acme.example", long)
	got, err := r.LookupTXT(ctx, "s._domainkey.acme.example")
	if err != nil || len(got) != 1 || got[0] != long {
		t.Fatalf("a long record: %q, %v", got, err)
	}
	if _, err := r.LookupTXT(ctx, "missing.acme.example"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("NXDOMAIN: %v, want ErrNotFound", err)
	}
	srv.Fail("broken.acme.example", true)
	if _, err := r.LookupTXT(ctx, "broken.acme.example"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("SERVFAIL: %v, want a failed lookup, not a missing record", err)
	}
	// A record too long for a datagram comes over TCP.
	var many []string
	for range 12 {
		many = append(many, long)
	}
	srv.SetTXT("big.acme.example", many...)
	if got, err := r.LookupTXT(ctx, "big.acme.example"); err != nil || len(got) != 12 {
		t.Fatalf("a truncated answer: %d records, %v", len(got), err)
	}
}
