package budget

import (
	"context"
	"testing"
	"time"
)

func TestFixedWindowAdmitsExactlyTheLimitPerMinute(t *testing.T) {
	f := NewFixedWindow()
	clock := time.Date(2026, 11, 28, 14, 0, 59, 0, time.UTC)
	f.now = func() time.Time { return clock }
	ctx := context.Background()
	take := func(user string, n int) (allowed int) {
		for range n {
			if f.Take(ctx, Request{APIUser: user, Limit: 3}) == Allow {
				allowed++
			}
		}
		return allowed
	}
	if got := take("a", 5); got != 3 {
		t.Fatalf("first minute: admitted %d, want 3", got)
	}
	if got := take("b", 1); got != 1 {
		t.Fatalf("another account shares no budget: admitted %d, want 1", got)
	}
	clock = clock.Add(time.Second) // 14:01:00, a new calendar minute
	if got := take("a", 5); got != 3 {
		t.Fatalf("next minute: admitted %d, want 3", got)
	}
	if d := f.Take(ctx, Request{APIUser: "c", Limit: 0}); d != OverLimit {
		t.Fatalf("zero budget: got %v, want over_limit", d)
	}
}
