package ratelimit_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mailfleet/mailfleet/ratelimit"
	"github.com/mailfleet/mailfleet/ratelimit/ratelimittest"
	"github.com/mailfleet/mailfleet/ratelimit/redistest"
	"github.com/mailfleet/mailfleet/relay/budget/leasewire"
)

func dialLeases(t testing.TB, addr string) leasewire.Client {
	t.Helper()
	return leasewire.NewClient(ratelimittest.Dial(t, addr))
}

func takeLease(t testing.TB, c leasewire.Client, holder string, asks ...leasewire.Ask) (*leasewire.TakeReply, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.Take(ctx, &leasewire.TakeRequest{Holder: holder, Asks: asks})
}

// TestLeaseService speaks the lease protocol to a real sidecar over gRPC,
// beside a ShouldRateLimit caller on the same server and budget.
func TestLeaseService(t *testing.T) {
	r := redistest.StartRedis(t)
	redistest.WaitForTimeLeft(time.Hour, 10*time.Second)
	sc := ratelimittest.StartSidecar(t, r.Addr, ratelimit.Options{Window: time.Hour})
	leases, rls := dialLeases(t, sc.Addr), dial(t, sc.Addr)

	reply, err := takeLease(t, leases, "relay-a",
		leasewire.Ask{APIUser: "acme", Limit: 10, Want: 2, Need: 1},
		leasewire.Ask{APIUser: "acme", Limit: 10, Want: 2, Next: true})
	if err != nil {
		t.Fatal(err)
	}
	g, next := reply.Grants[0], reply.Grants[1]
	if g.Units != 2 || g.Left != 8 || g.Fallback || g.WindowMicros != time.Hour.Microseconds() || g.StartsInMicros > 0 || g.EndsInMicros <= 0 {
		t.Fatalf("grant %+v", g)
	}
	if gap := next.StartsInMicros - g.EndsInMicros; next.Units != 2 || next.Window != g.Window+1 || gap < -time.Second.Microseconds() || gap > 0 {
		t.Fatalf("next window's grant %+v (this window's %+v)", next, g)
	}
	// The gateway's calls see the lease as used: 8 more, then 429.
	for i := range 9 {
		want := rlsv3.RateLimitResponse_OK
		if i == 8 {
			want = rlsv3.RateLimitResponse_OVER_LIMIT
		}
		if got := ask(t, rls, request("acme", 10)).GetOverallCode(); got != want {
			t.Fatalf("call %d beside a lease of 2: %v, want %v", i, got, want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	back, err := leases.Return(ctx, &leasewire.ReturnRequest{Holder: "relay-a", Unused: []leasewire.Unused{
		{APIUser: "acme", Window: g.Window, Units: 5}, {APIUser: "acme", Window: g.Window - 1, Units: 1},
	}})
	if err != nil || len(back.Returned) != 2 || back.Returned[0] != 2 || back.Returned[1] != 0 {
		t.Fatalf("return: %+v, %v; want the 2 units taken, and nothing of a past window", back, err)
	}
	if got := ask(t, rls, request("acme", 10)).GetOverallCode(); got != rlsv3.RateLimitResponse_OK {
		t.Fatalf("call after the return: %v", got)
	}
	if n := sc.Metric(t, "mailfleet_ratelimit_lease_units_total", "direction", "granted"); n != 4 {
		t.Errorf("units granted %v, want 4", n)
	}
	if n := sc.Metric(t, "mailfleet_ratelimit_lease_units_total", "direction", "returned"); n != 2 {
		t.Errorf("units returned %v, want 2", n)
	}

	for _, bad := range []*leasewire.TakeRequest{
		{Asks: []leasewire.Ask{{APIUser: "acme", Limit: 1, Want: 1}}},
		{Holder: "relay-a"},
		{Holder: "relay-a", Asks: []leasewire.Ask{{Limit: 1, Want: 1}}},
		{Holder: "relay-a", Asks: []leasewire.Ask{{APIUser: "acme", Limit: -1, Want: 1}}},
	} {
		if _, err := leases.Take(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%+v: %v, want InvalidArgument", bad, err)
		}
	}
}

// TestLeaseFailureModes: with Redis gone, allow grants from the pod's
// fallback exactly what the message needs (never a block), and deny answers
// Unavailable, which the relay turns into 451 and never 536.
func TestLeaseFailureModes(t *testing.T) {
	for _, mode := range []ratelimit.FailureMode{ratelimit.FailureAllow, ratelimit.FailureDeny} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			r := redistest.StartRedis(t)
			sc := ratelimittest.StartSidecar(t, r.Addr, ratelimit.Options{
				Window: time.Hour, Deadline: failureDeadline, FailureMode: mode, Replicas: 2,
			})
			c := dialLeases(t, sc.Addr)
			// Warm the connections while Redis is up. On a loaded machine a
			// first call can miss the 50 ms deadline and get the failure
			// policy; that is not what this test is about, so it asks again.
			for deadline := time.Now().Add(10 * time.Second); ; {
				_, err := takeLease(t, c, "relay-a", leasewire.Ask{APIUser: "warm", Limit: 10, Want: 1})
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("Redis up, no lease for 10s: %v", err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			r.Kill()
			for i := range podShare + 1 {
				start := time.Now()
				reply, err := takeLease(t, c, "relay-a", leasewire.Ask{APIUser: "acme", Limit: failureLimit, Want: 4, Need: 1})
				if took := time.Since(start); took > failureDeadline+slack {
					t.Errorf("lease %d took %v with Redis down", i, took)
				}
				if mode == ratelimit.FailureDeny {
					if status.Code(err) != codes.Unavailable {
						t.Fatalf("lease %d: %v, want Unavailable", i, err)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				g := reply.Grants[0]
				want := int64(1)
				if i == podShare {
					want = 0 // the pod's share is spent
				}
				if !g.Fallback || g.Units != want {
					t.Fatalf("lease %d with Redis down: %+v, want %d unit from the fallback", i, g, want)
				}
			}
			outcome := ratelimit.OutcomeFailureAllowed
			if mode == ratelimit.FailureDeny {
				outcome = ratelimit.OutcomeFailureDenied
			}
			if n := sc.Metric(t, "mailfleet_ratelimit_lease_calls_total", "call", "take", "outcome", outcome); n < podShare {
				t.Errorf("lease takes with outcome %s: %v", outcome, n)
			}
		})
	}
}

// TestLeaseBatchHasTimeForItsSize: a relay's batch of hundreds of leases
// (every account's lease on the next window) gets Redis time in proportion
// to its size. Held to one decision's deadline (50 ms by default), such a batch missed it
// whenever Redis was briefly slow, and every account got the fallback's
// nothing instead of a lease: each then waited for a lease at the window's
// start. A single decision keeps its own deadline.
func TestLeaseBatchHasTimeForItsSize(t *testing.T) {
	r := redistest.StartRedis(t)
	redistest.WaitForTimeLeft(time.Hour, 10*time.Second)
	// A decision's deadline of 100 ms: a batch of 512 gets 500 ms.
	sc := ratelimittest.StartSidecar(t, r.Addr, ratelimit.Options{Window: time.Hour, Deadline: 100 * time.Millisecond})
	leases := dialLeases(t, sc.Addr)
	asks := make([]leasewire.Ask, leasewire.MaxItems)
	for i := range asks {
		asks[i] = leasewire.Ask{APIUser: fmt.Sprintf("acct-%d", i), Limit: 1000, Want: 10, Next: true}
	}
	// Redis stalls for longer than one decision's deadline.
	r.Pause(150 * time.Millisecond)
	reply, err := takeLease(t, leases, "relay-a", asks...)
	if err != nil {
		t.Fatal(err)
	}
	for i, g := range reply.Grants {
		if g.Fallback || g.Units != 10 {
			t.Fatalf("lease %d of a batch of %d after a 150 ms stall: %+v, want 10 units counted in Redis", i, len(asks), g)
		}
	}
	r.Pause(400 * time.Millisecond)
	reply, err = takeLease(t, leases, "relay-a", leasewire.Ask{APIUser: "alone", Limit: 1000, Want: 10, Need: 1})
	if err != nil {
		t.Fatal(err)
	}
	if g := reply.Grants[0]; !g.Fallback || g.Units != 1 {
		t.Fatalf("a single lease during a 400 ms stall: %+v, want the fallback's decision for the message", g)
	}
}
