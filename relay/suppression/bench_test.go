package suppression

import (
	"context"
	"log/slog"
	"testing"
	"time"
)

// BenchmarkSuppressed is the cost of one recipient's check, which RCPT and
// every delivery attempt pay: a key-value get on the embedded JetStream
// ("bucket"), or an answer from the watched keys ("watched").
//
//	go test -run '^$' -bench BenchmarkSuppressed ./relay/suppression
func BenchmarkSuppressed(b *testing.B) {
	for _, watched := range []bool{false, true} {
		b.Run(map[bool]string{false: "bucket", true: "watched"}[watched], func(b *testing.B) {
			l, _ := openList(b)
			g := NewGuard(nil, slog.New(slog.DiscardHandler))
			g.Attach(l)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if watched {
				go l.Watch(ctx, slog.New(slog.DiscardHandler))
				for !l.keys.absent(Key("acme", "someone@example.com"), l.ttl, time.Now()) {
					time.Sleep(time.Millisecond)
				}
			}
			for b.Loop() {
				g.Suppressed(ctx, "acme", "someone@example.com")
			}
		})
	}
}
