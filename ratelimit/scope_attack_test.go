package ratelimit_test

import (
	"context"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"

	"github.com/mailfleet/mailfleet/ratelimit"
	"github.com/mailfleet/mailfleet/ratelimit/ratelimittest"
	"github.com/mailfleet/mailfleet/ratelimit/redistest"
)

// Attack (issue 12.16): two relays in different namespaces share one Redis,
// and each has an account named "shop". Counted by api_user alone, one
// tenant's sending used up the other's budget. Each relay's sidecar counts
// in its own scope (the operator passes --scope namespace/name).
func TestAttackBudgetSharedAcrossRelays(t *testing.T) {
	const budget = 3
	r := redistest.StartRedis(t)
	teamA := dial(t, ratelimittest.StartSidecar(t, r.Addr, ratelimit.Options{Scope: "team-a/mx", Window: time.Hour}).Addr)
	teamB := dial(t, ratelimittest.StartSidecar(t, r.Addr, ratelimit.Options{Scope: "team-b/mx", Window: time.Hour}).Addr)
	teamA2 := dial(t, ratelimittest.StartSidecar(t, r.Addr, ratelimit.Options{Scope: "team-a/mx", Window: time.Hour}).Addr)

	admitted := func(c rlsv3.RateLimitServiceClient, n int) int {
		ok := 0
		for range n {
			if ask(t, c, request("shop", budget)).GetOverallCode() == rlsv3.RateLimitResponse_OK {
				ok++
			}
		}
		return ok
	}
	if got := admitted(teamA, budget+2); got != budget {
		t.Fatalf("team-a admitted %d of %d, want its budget %d", got, budget+2, budget)
	}
	if got := admitted(teamB, budget); got != budget {
		t.Fatalf("team-b admitted %d of its budget %d after team-a spent team-a's", got, budget)
	}
	// Another sidecar of team-a's own fleet still shares team-a's budget.
	if got := admitted(teamA2, 1); got != 0 {
		t.Fatal("a second sidecar of team-a's relay did not share its budget")
	}
	keys, err := r.Client().Keys(context.Background(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 {
		t.Fatalf("Redis keys %v, want one counter per scope", keys)
	}
}

func TestScopeRefusesSeparators(t *testing.T) {
	if _, err := ratelimit.NewServer(nil, ratelimit.Options{Scope: "a|b"}); err == nil {
		t.Fatal("a scope with '|' was accepted; it could collide with another scope's keys")
	}
}
