package ratelimit_test

import (
	"context"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mailfleet/mailfleet/ratelimit"
	"github.com/mailfleet/mailfleet/ratelimit/ratelimittest"
	"github.com/mailfleet/mailfleet/ratelimit/redistest"
)

// dial opens a gRPC connection to a sidecar, as a relay or a gateway would.
func dial(t testing.TB, addr string) rlsv3.RateLimitServiceClient {
	t.Helper()
	return rlsv3.NewRateLimitServiceClient(ratelimittest.Dial(t, addr))
}

// request is the relay's question: one descriptor for the account, with its
// budget per minute as the limit override.
func request(apiUser string, limit uint32) *rlsv3.RateLimitRequest {
	return &rlsv3.RateLimitRequest{
		Domain: "mailfleet",
		Descriptors: []*ratelimitv3.RateLimitDescriptor{{
			Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "api_user", Value: apiUser}},
			Limit:   &ratelimitv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: limit, Unit: typev3.RateLimitUnit_MINUTE},
		}},
	}
}

func ask(t testing.TB, c rlsv3.RateLimitServiceClient, req *rlsv3.RateLimitRequest) *rlsv3.RateLimitResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.ShouldRateLimit(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestShouldRateLimit(t *testing.T) {
	r := redistest.StartRedis(t)
	sc := ratelimittest.StartSidecar(t, r.Addr, ratelimit.Options{DefaultLimit: 3, Window: time.Hour})
	c := dial(t, sc.Addr)
	gateway := func(hits uint32, kv ...string) *rlsv3.RateLimitRequest {
		d := &ratelimitv3.RateLimitDescriptor{}
		for i := 0; i+1 < len(kv); i += 2 {
			d.Entries = append(d.Entries, &ratelimitv3.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
		}
		return &rlsv3.RateLimitRequest{Domain: "api-gateway", HitsAddend: hits, Descriptors: []*ratelimitv3.RateLimitDescriptor{d}}
	}
	steps := []struct {
		name      string
		req       *rlsv3.RateLimitRequest
		code      rlsv3.RateLimitResponse_Code
		remaining uint32
	}{
		{"the relay's first call", request("acme", 3), rlsv3.RateLimitResponse_OK, 2},
		{"a gateway's call counts against the same budget", gateway(1, "api_user", "acme", "label", "7"), rlsv3.RateLimitResponse_OK, 1},
		{"the relay's last call", request("acme", 3), rlsv3.RateLimitResponse_OK, 0},
		{"the relay is now over the budget", request("acme", 3), rlsv3.RateLimitResponse_OVER_LIMIT, 0},
		{"another account", request("other", 3), rlsv3.RateLimitResponse_OK, 2},
		{"hits_addend", gateway(2, "api_user", "third"), rlsv3.RateLimitResponse_OK, 1},
		{"another service's descriptor", gateway(1, "remote_address", "10.0.0.1"), rlsv3.RateLimitResponse_OK, 0},
	}
	for _, s := range steps {
		resp := ask(t, c, s.req)
		if resp.GetOverallCode() != s.code || len(resp.GetStatuses()) != 1 {
			t.Fatalf("%s: %v", s.name, resp)
		}
		st := resp.GetStatuses()[0]
		if st.GetCode() != s.code || st.GetLimitRemaining() != s.remaining {
			t.Fatalf("%s: status %v, want %v with %d remaining", s.name, st, s.code, s.remaining)
		}
		if st.GetCurrentLimit() != nil && st.GetCurrentLimit().GetUnit() != rlsv3.RateLimitResponse_RateLimit_MINUTE {
			t.Fatalf("%s: unit %v", s.name, st.GetCurrentLimit())
		}
	}
	_, err := c.ShouldRateLimit(context.Background(), gateway(1, "label", "7"))
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("label alone: err %v, want InvalidArgument", err)
	}
}
