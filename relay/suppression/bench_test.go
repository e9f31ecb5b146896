package suppression

import (
	"context"
	"log/slog"
	"testing"
)

// BenchmarkSuppressed is the cost of one recipient's check, which RCPT and
// every delivery attempt pay: a key-value get on the embedded JetStream.
//
//	go test -run '^$' -bench BenchmarkSuppressed ./relay/suppression
func BenchmarkSuppressed(b *testing.B) {
	l, _ := openList(b)
	g := NewGuard(nil, slog.New(slog.DiscardHandler))
	g.Attach(l)
	ctx := context.Background()
	for b.Loop() {
		g.Suppressed(ctx, "acme", "someone@example.com")
	}
}
