package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/ratelimit/redistest"
)

func TestLeaseScript(t *testing.T) {
	c, r := newTestCounter(t, time.Hour)
	redistest.WaitForTimeLeft(time.Hour, 10*time.Second) // the cases share one window
	ctx := context.Background()
	lease := func(holder string, a LeaseAsk) Lease {
		t.Helper()
		l, err := c.Leases(ctx, holder, []LeaseAsk{a})
		if err != nil {
			t.Fatal(err)
		}
		return l[0]
	}
	giveBack := func(holder, user string, window, units int64) int64 {
		t.Helper()
		n, err := c.Returns(ctx, holder, []Unused{{APIUser: user, Window: window, Units: units}})
		if err != nil {
			t.Fatal(err)
		}
		return n[0]
	}
	take := func(user string, hits, limit int64) Result {
		t.Helper()
		res, err := c.Take(ctx, user, hits, limit)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	t.Run("grants the block while plenty is left", func(t *testing.T) {
		l := lease("a", LeaseAsk{APIUser: "u1", Want: 10, Limit: 100})
		if l.Units != 10 || l.Left != 90 {
			t.Fatalf("lease %+v, want 10 granted and 90 left", l)
		}
		if l.StartsIn > 0 || l.EndsIn <= 0 || l.EndsIn > time.Hour || l.EndsIn-l.StartsIn != time.Hour {
			t.Fatalf("lease %+v: not placed in the current hour", l)
		}
	})
	t.Run("beyond need, at most a quarter of what is left", func(t *testing.T) {
		// 90 left: need 2, then at most (90-2)/4 = 22 more.
		if l := lease("a", LeaseAsk{APIUser: "u1", Want: 50, Need: 2, Limit: 100}); l.Units != 24 || l.Left != 66 {
			t.Fatalf("lease %+v, want 24 granted and 66 left", l)
		}
	})
	t.Run("leases and calls count in one counter", func(t *testing.T) {
		if res := take("u1", 60, 100); !res.Allowed || res.Count != 94 {
			t.Fatalf("call after leases: %+v, want admitted at 94", res)
		}
		if res := take("u1", 7, 100); res.Allowed {
			t.Fatalf("call over the budget with leases out: %+v", res)
		}
	})
	t.Run("all of need or nothing", func(t *testing.T) {
		if l := lease("b", LeaseAsk{APIUser: "u1", Want: 10, Need: 7, Limit: 100}); l.Units != 0 || l.Left != 6 {
			t.Fatalf("need 7 with 6 left: %+v, want nothing granted and 6 left", l)
		}
		if l := lease("b", LeaseAsk{APIUser: "u1", Want: 10, Need: 6, Limit: 100}); l.Units != 6 || l.Left != 0 {
			t.Fatalf("need 6 with 6 left: %+v, want 6", l)
		}
		if l := lease("b", LeaseAsk{APIUser: "u1", Want: 10, Limit: 100}); l.Units != 0 {
			t.Fatalf("nothing left: %+v", l)
		}
	})
	t.Run("a holder gives back at most what it took", func(t *testing.T) {
		w := lease("a", LeaseAsk{APIUser: "u1", Want: 1, Limit: 100}).Window
		if n := giveBack("c", "u1", w, 5); n != 0 {
			t.Fatalf("a holder that took nothing gave back %d", n)
		}
		if n := giveBack("b", "u1", w, 10); n != 6 {
			t.Fatalf("holder b took 6 and gave back %d", n)
		}
		if n := giveBack("a", "u1", w, 100); n != 34 {
			t.Fatalf("holder a took 34 and gave back %d", n)
		}
		if res := take("u1", 40, 100); !res.Allowed || res.Count != 100 {
			t.Fatalf("after the returns: %+v, want 40 admitted up to 100", res)
		}
	})
	t.Run("a return for a past window does nothing", func(t *testing.T) {
		l := lease("a", LeaseAsk{APIUser: "u2", Want: 5, Limit: 10})
		if err := r.Client().Set(ctx, Key("", "u2", l.Window-1), 5, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		if err := r.Client().HSet(ctx, Key("", "u2", l.Window-1)+":leases", "a", 5).Err(); err != nil {
			t.Fatal(err)
		}
		if n := giveBack("a", "u2", l.Window-1, 5); n != 0 {
			t.Fatalf("past window: gave back %d", n)
		}
	})
	t.Run("the next window", func(t *testing.T) {
		now := lease("a", LeaseAsk{APIUser: "u3", Want: 3, Limit: 100})
		next := lease("a", LeaseAsk{APIUser: "u3", Want: 4, Limit: 100, Next: true})
		if next.Units != 4 || next.Window != now.Window+1 || next.StartsIn <= 0 || next.EndsIn-next.StartsIn != time.Hour {
			t.Fatalf("next window's lease %+v (this window's %+v)", next, now)
		}
		if l := lease("a", LeaseAsk{APIUser: "u3", Want: 97, Need: 97, Limit: 100}); l.Units != 97 {
			t.Fatalf("the next window's lease took from this one: %+v", l)
		}
		if n := giveBack("a", "u3", next.Window, 4); n != 4 {
			t.Fatalf("a lease on the next window gave back %d", n)
		}
		ttl, err := r.Client().PTTL(ctx, Key("", "u3", next.Window)).Result()
		if err != nil || ttl < time.Hour {
			t.Fatalf("the next window's counter expires in %v (%v): before its window ends", ttl, err)
		}
	})
	t.Run("a zero budget grants nothing", func(t *testing.T) {
		if l := lease("a", LeaseAsk{APIUser: "u4", Want: 5, Limit: 0}); l.Units != 0 || l.Left != 0 {
			t.Fatalf("zero budget: %+v", l)
		}
	})
}

// TestLeaseBatch: a batch of asks and returns is one pipeline, each item
// decided on its own, and one after SCRIPT FLUSH loads the scripts again.
func TestLeaseBatch(t *testing.T) {
	c, r := newTestCounter(t, time.Hour)
	redistest.WaitForTimeLeft(time.Hour, 10*time.Second)
	ctx := context.Background()
	for round := range 2 {
		if err := r.Client().ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		leases, err := c.Leases(ctx, "a", []LeaseAsk{
			{APIUser: "x", Want: 2, Limit: 100},
			{APIUser: "y", Want: 8, Need: 8, Limit: 4},
			{APIUser: "x", Want: 3, Limit: 100},
		})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if leases[0].Units != 2 || leases[1].Units != 0 || leases[1].Left != 4 || leases[2].Units != 3 || leases[2].Left != []int64{95, 91}[round] {
			t.Fatalf("round %d: %+v", round, leases)
		}
		if err := r.Client().ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		back, err := c.Returns(ctx, "a", []Unused{{APIUser: "x", Window: leases[0].Window, Units: 1}, {APIUser: "y", Window: leases[1].Window, Units: 1}})
		if err != nil || back[0] != 1 || back[1] != 0 {
			t.Fatalf("round %d: returns %v, %v", round, back, err)
		}
	}
}
