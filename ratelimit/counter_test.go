package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/ratelimit/redistest"
)

// newTestCounter counts in a fresh Redis; an hour-long window keeps each case
// inside one window (a case that straddles one anyway is run again).
func newTestCounter(t *testing.T, window time.Duration) (*Counter, *redistest.Redis) {
	t.Helper()
	r := redistest.StartRedis(t)
	client := NewRedisClient(RedisOptions{Address: r.Addr})
	t.Cleanup(func() { client.Close() })
	c, err := NewCounter(client, window)
	if err != nil {
		t.Fatal(err)
	}
	return c, r
}

func TestCounterScript(t *testing.T) {
	c, _ := newTestCounter(t, time.Hour)
	type step struct {
		user        string
		hits, limit int64
		allowed     bool
		count       int64
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"admits exactly the limit", []step{
			{user: "a", hits: 1, limit: 3, allowed: true, count: 1},
			{user: "a", hits: 1, limit: 3, allowed: true, count: 2},
			{user: "a", hits: 1, limit: 3, allowed: true, count: 3},
			{user: "a", hits: 1, limit: 3, allowed: false, count: 3},
			{user: "a", hits: 1, limit: 3, allowed: false, count: 3},
		}},
		{"a refused call is not counted", []step{
			{user: "b", hits: 2, limit: 3, allowed: true, count: 2},
			{user: "b", hits: 2, limit: 3, allowed: false, count: 2},
			{user: "b", hits: 1, limit: 3, allowed: true, count: 3},
		}},
		{"hits_addend counts several calls at once", []step{
			{user: "c", hits: 4, limit: 10, allowed: true, count: 4},
			{user: "c", hits: 6, limit: 10, allowed: true, count: 10},
			{user: "c", hits: 1, limit: 10, allowed: false, count: 10},
		}},
		{"more hits than the whole limit", []step{
			{user: "d", hits: 6, limit: 5, allowed: false, count: 0},
			{user: "d", hits: 5, limit: 5, allowed: true, count: 5},
		}},
		{"a zero limit admits nothing", []step{
			{user: "e", hits: 1, limit: 0, allowed: false, count: 0},
		}},
		{"each api_user has its own counter", []step{
			{user: "f", hits: 1, limit: 1, allowed: true, count: 1},
			{user: "g", hits: 1, limit: 1, allowed: true, count: 1},
			{user: "f", hits: 1, limit: 1, allowed: false, count: 1},
			{user: "g", hits: 1, limit: 2, allowed: true, count: 2},
		}},
		{"a limit lowered below the count", []step{
			{user: "h", hits: 3, limit: 5, allowed: true, count: 3},
			{user: "h", hits: 1, limit: 2, allowed: false, count: 3},
		}},
	}
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			results := make([]Result, len(tt.steps))
			windows := map[int64]bool{}
			for i, s := range tt.steps {
				res, err := c.Take(ctx, s.user, s.hits, s.limit)
				if err != nil {
					t.Fatal(err)
				}
				results[i] = res
				windows[res.Window] = true
			}
			if len(windows) != 1 {
				t.Skip("the case straddled an hour boundary; its counts are not comparable")
			}
			for i, s := range tt.steps {
				res := results[i]
				if res.Allowed != s.allowed || res.Count != s.count {
					t.Fatalf("step %d (%s +%d of %d): allowed=%v count=%d, want allowed=%v count=%d",
						i, s.user, s.hits, s.limit, res.Allowed, res.Count, s.allowed, s.count)
				}
				if want := max(s.limit-s.count, 0); res.Remaining() != want {
					t.Fatalf("step %d: remaining %d, want %d", i, res.Remaining(), want)
				}
			}
		})
	}
}

// TestCounterWindowFromRedisTime checks the key, its TTL and the reset time
// against Redis's own clock.
func TestCounterWindowFromRedisTime(t *testing.T) {
	const window = 10 * time.Second
	c, r := newTestCounter(t, window)
	admin := r.Client()
	ctx := context.Background()
	before, err := admin.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Take(ctx, "acme", 2, 100)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := admin.Time(ctx).Result()
	lo, hi := redistest.WindowOf(before, window), redistest.WindowOf(after, window)
	if res.Window < lo || res.Window > hi {
		t.Fatalf("window %d, want it between %d and %d (Redis TIME)", res.Window, lo, hi)
	}
	end := time.Unix((res.Window+1)*int64(window/time.Second), 0)
	// The script counts in whole milliseconds, rounding the time down.
	if got, want := res.ResetIn, end.Sub(before)+time.Millisecond; got <= 0 || got > want {
		t.Fatalf("reset in %v, want (0, %v]", got, want)
	}
	key := Key("", "acme", res.Window)
	if n, err := admin.Get(ctx, key).Int64(); err != nil || n != 2 {
		t.Fatalf("GET %s = %d, %v; want 2", key, n, err)
	}
	ttl, err := admin.TTL(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl <= window || ttl > window+ttlSlack {
		t.Fatalf("TTL %v, want just over the window: (%v, %v]", ttl, window, window+ttlSlack)
	}
}

// TestCounterReloadsFlushedScript: after a Redis restart or SCRIPT FLUSH the
// cached script is gone; EVALSHA's NOSCRIPT must fall back to EVAL.
func TestCounterReloadsFlushedScript(t *testing.T) {
	c, r := newTestCounter(t, time.Hour)
	ctx := context.Background()
	if _, err := c.Take(ctx, "acme", 1, 10); err != nil {
		t.Fatal(err)
	}
	if err := r.Client().ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	res, err := c.Take(ctx, "acme", 1, 10)
	if err != nil {
		t.Fatalf("take after SCRIPT FLUSH: %v", err)
	}
	if !res.Allowed || res.Count < 1 {
		t.Fatalf("take after SCRIPT FLUSH: %+v", res)
	}
}

func TestNewCounterWantsWholeSeconds(t *testing.T) {
	for _, w := range []time.Duration{0, 500 * time.Millisecond, 1500 * time.Millisecond} {
		if _, err := NewCounter(nil, w); err == nil {
			t.Errorf("window %v: no error", w)
		}
	}
}
