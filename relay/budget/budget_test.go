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

func TestPodShareAdmitsEachPodItsShareRoundedUp(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ limit, pods, want int }{
		{limit: 30, pods: 3, want: 10},
		{limit: 10, pods: 3, want: 4},
		{limit: 1, pods: 5, want: 1},
		{limit: 7, pods: 1, want: 7},
		{limit: 7, pods: 0, want: 7},
	} {
		window := NewFixedWindow()
		window.now = func() time.Time { return time.Date(2026, 11, 28, 14, 0, 0, 0, time.UTC) }
		share := PodShare{Budget: window, Pods: tc.pods}
		admitted := 0
		for range tc.limit * 2 {
			if share.Take(ctx, Request{APIUser: "a", Limit: tc.limit}) == Allow {
				admitted++
			}
		}
		if admitted != tc.want {
			t.Errorf("limit %d over %d pods: one pod admitted %d, want %d", tc.limit, tc.pods, admitted, tc.want)
		}
	}
}
