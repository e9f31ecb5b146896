package ratelimit_test

import (
	"context"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mailfleet/mailfleet/ratelimit"
	"github.com/mailfleet/mailfleet/ratelimit/ratelimittest"
	"github.com/mailfleet/mailfleet/ratelimit/redistest"
)

const (
	failureDeadline = 50 * time.Millisecond
	// slack is what a decision may take beyond the deadline on a busy test
	// machine: this is about returning at all, not about speed. A decision
	// that waited for Redis would take the whole pause (redisPause) or,
	// with Redis killed, the caller's 5 s; a second tells those apart, where
	// a quarter of one did not (under make test with other work on both
	// cores, scheduling alone added ~0.45 s to a decision).
	slack      = time.Second
	redisPause = 2 * time.Second
	// With 2 replicas each pod's fallback admits half of this.
	failureLimit = 10
	podShare     = failureLimit / 2
)

// outcome is one call as a relay sees it.
type outcome struct {
	code   codes.Code
	result rlsv3.RateLimitResponse_Code
	window int64
}

// TestRedisFailures pauses, kills and restarts Redis under a sidecar in each
// failure mode: every decision comes back within the deadline, the policy
// applies and is counted, and once Redis is back the counting is Redis's again.
func TestRedisFailures(t *testing.T) {
	tests := []struct {
		mode ratelimit.FailureMode
		// check judges the calls made while Redis is down.
		check func(t *testing.T, sc *ratelimittest.Sidecar, calls []outcome)
	}{
		{ratelimit.FailureAllow, checkFallback},
		{ratelimit.FailureDeny, checkDenied},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			t.Parallel()
			r := redistest.StartRedis(t)
			sc := ratelimittest.StartSidecar(t, r.Addr, ratelimit.Options{
				Window: time.Hour, Deadline: failureDeadline, FailureMode: tt.mode,
				Replicas: 2, Cooldown: 200 * time.Millisecond,
			})
			c := dial(t, sc.Addr)
			waitCountedInRedis(t, r, sc, c, "before")

			r.Pause(redisPause)
			tt.check(t, sc, callTimed(t, c, "paused", 2*podShare))
			waitCountedInRedis(t, r, sc, c, "after-pause")

			r.Kill()
			tt.check(t, sc, callTimed(t, c, "killed", 2*podShare))
			r.Restart()
			waitCountedInRedis(t, r, sc, c, "after-restart")
		})
	}
}

// callTimed makes n decisions for apiUser, failing the test if any takes
// longer than the deadline plus slack.
func callTimed(t *testing.T, c rlsv3.RateLimitServiceClient, apiUser string, n int) []outcome {
	t.Helper()
	var out []outcome
	var slowest time.Duration
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		sent := time.Now()
		resp, err := c.ShouldRateLimit(ctx, request(apiUser, failureLimit))
		received := time.Now()
		cancel()
		took := received.Sub(sent)
		if took > failureDeadline+slack {
			t.Errorf("%s: a decision took %v, past the %v deadline", apiUser, took, failureDeadline)
		}
		slowest = max(slowest, took)
		o := outcome{code: status.Code(err), result: resp.GetOverallCode(), window: -1}
		if err == nil {
			o.window = windowEnded(t, sent, received, resp.GetStatuses()[0].GetDurationUntilReset().AsDuration(), time.Hour)
		}
		out = append(out, o)
	}
	if n > 1 {
		t.Logf("%s: %d decisions, the slowest in %v", apiUser, n, slowest)
	}
	return out
}

// checkFallback: in allow mode the pod's fallback answers, admitting this
// pod's share of the limit in the window and refusing the rest as over limit.
func checkFallback(t *testing.T, sc *ratelimittest.Sidecar, calls []outcome) {
	t.Helper()
	admitted, refused := map[int64]int{}, map[int64]int{}
	for i, o := range calls {
		switch {
		case o.code != codes.OK:
			t.Fatalf("call %d: gRPC %v, want an answer from the fallback", i, o.code)
		case o.result == rlsv3.RateLimitResponse_OK:
			admitted[o.window]++
		default:
			refused[o.window]++
		}
	}
	for w, n := range admitted {
		if refused[w] > 0 && n != podShare {
			t.Errorf("fallback admitted %d in a window, want this pod's share %d", n, podShare)
		}
	}
	if len(refused) == 0 {
		t.Errorf("fallback admitted %d calls of %d and refused none; want %d admitted", len(calls), len(calls), podShare)
	}
	if n := sc.Metric(t, "mailfleet_ratelimit_fallback_total"); n < float64(len(calls)) {
		t.Errorf("fallback metric %v, want at least %d", n, len(calls))
	}
	if n := sc.Metric(t, "mailfleet_ratelimit_decisions_total", "outcome", ratelimit.OutcomeFailureAllowed); n < podShare {
		t.Errorf("failure_allowed decisions %v, want at least %d", n, podShare)
	}
	if n := sc.Metric(t, "mailfleet_ratelimit_decisions_total", "outcome", ratelimit.OutcomeFailureOverLimit); n < 1 {
		t.Errorf("failure_over_limit decisions %v, want some", n)
	}
	checkRedisErrorsCounted(t, sc)
}

// checkDenied: in deny mode every call fails with Unavailable, which the
// relay answers 451 4.7.1, and never OVER_LIMIT (536).
func checkDenied(t *testing.T, sc *ratelimittest.Sidecar, calls []outcome) {
	t.Helper()
	for i, o := range calls {
		if o.code != codes.Unavailable {
			t.Fatalf("call %d: gRPC %v (result %v), want Unavailable", i, o.code, o.result)
		}
	}
	if n := sc.Metric(t, "mailfleet_ratelimit_decisions_total", "outcome", ratelimit.OutcomeFailureDenied); n < float64(len(calls)) {
		t.Errorf("failure_denied decisions %v, want at least %d", n, len(calls))
	}
	if n := sc.Metric(t, "mailfleet_ratelimit_fallback_total"); n != 0 {
		t.Errorf("fallback used %v times in deny mode", n)
	}
	checkRedisErrorsCounted(t, sc)
}

func checkRedisErrorsCounted(t *testing.T, sc *ratelimittest.Sidecar) {
	t.Helper()
	errs := sc.Metric(t, "mailfleet_ratelimit_redis_errors_total", "reason", "timeout") +
		sc.Metric(t, "mailfleet_ratelimit_redis_errors_total", "reason", "error")
	if errs == 0 {
		t.Error("no Redis error counted")
	}
}

// waitCountedInRedis polls until a decision for apiUser is counted in Redis:
// its key holds the count the sidecar reported. Every call on the way must
// still come back within the deadline.
func waitCountedInRedis(t *testing.T, r *redistest.Redis, sc *ratelimittest.Sidecar, c rlsv3.RateLimitServiceClient, apiUser string) {
	t.Helper()
	admin := r.Client()
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := sc.Metric(t, "mailfleet_ratelimit_decisions_total", "outcome", ratelimit.OutcomeOK)
		o := callTimed(t, c, apiUser, 1)[0]
		if o.code == codes.OK && sc.Metric(t, "mailfleet_ratelimit_decisions_total", "outcome", ratelimit.OutcomeOK) > before {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			n, err := admin.Get(ctx, ratelimit.Key("", apiUser, o.window)).Int64()
			cancel()
			if err != nil || n < 1 {
				t.Fatalf("%s: answered from Redis, but its key holds %d (%v)", apiUser, n, err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: Redis did not take over again within 10s (last call: %v %v)", apiUser, o.code, o.result)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
