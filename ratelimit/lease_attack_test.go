package ratelimit_test

import (
	"context"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"

	"github.com/mailfleet/mailfleet/ratelimit"
	"github.com/mailfleet/mailfleet/ratelimit/ratelimittest"
	"github.com/mailfleet/mailfleet/ratelimit/redistest"
	"github.com/mailfleet/mailfleet/relay/budget/leasewire"
)

// Attack: a caller that reaches the sidecar's port (a gateway's, when the
// sidecar listens on the pod IP) gives back units a relay has leased and
// will still admit with, so the counter would admit them a second time.
// A return gives back at most what its own holder took in that window, and
// a relay's holder name carries 48 random bits.
func TestAttackReturnAnotherHoldersLease(t *testing.T) {
	const budget = 10
	r := redistest.StartRedis(t)
	redistest.WaitForTimeLeft(time.Hour, 10*time.Second)
	sc := ratelimittest.StartSidecar(t, r.Addr, ratelimit.Options{Window: time.Hour})
	leases, rls := dialLeases(t, sc.Addr), dial(t, sc.Addr)

	reply, err := takeLease(t, leases, "relay-a-1f2e3d4c5b6a", leasewire.Ask{APIUser: "shop", Limit: budget, Want: budget, Need: budget})
	if err != nil || reply.Grants[0].Units != budget {
		t.Fatalf("the relay's lease: %+v, %v", reply, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, holder := range []string{"attacker", "relay-a"} {
		back, err := leases.Return(ctx, &leasewire.ReturnRequest{Holder: holder, Unused: []leasewire.Unused{
			{APIUser: "shop", Window: reply.Grants[0].Window, Units: budget},
		}})
		if err != nil || back.Returned[0] != 0 {
			t.Fatalf("holder %q gave back the relay's units: %+v, %v", holder, back, err)
		}
	}
	if got := ask(t, rls, request("shop", budget)).GetOverallCode(); got != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("a call beside the relay's lease of the whole budget: %v, want OVER_LIMIT", got)
	}
}
