package ratelimit

import (
	"strings"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mailfleet/mailfleet/api/wire"
)

// limitsSource is a credentials.Source with fixed accounts.
type limitsSource map[string]int

func (l limitsSource) Lookup(apiUser string) (*wire.Account, bool) {
	b, ok := l[apiUser]
	if !ok {
		return nil, false
	}
	return &wire.Account{APIUser: apiUser, BudgetPerMinute: b}, true
}

func entries(kv ...string) []*ratelimitv3.RateLimitDescriptor_Entry {
	var out []*ratelimitv3.RateLimitDescriptor_Entry
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, &ratelimitv3.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
	}
	return out
}

func perMinute(n uint32) *ratelimitv3.RateLimitDescriptor_RateLimitOverride {
	return &ratelimitv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: n, Unit: typev3.RateLimitUnit_MINUTE}
}

func TestChecks(t *testing.T) {
	s, err := NewServer(nil, Options{DefaultLimit: 500, Limits: limitsSource{"big": 9000, "unset": 0}})
	if err != nil {
		t.Fatal(err)
	}
	desc := func(d *ratelimitv3.RateLimitDescriptor) []*ratelimitv3.RateLimitDescriptor {
		return []*ratelimitv3.RateLimitDescriptor{d}
	}
	tests := []struct {
		name    string
		req     *rlsv3.RateLimitRequest
		want    *check // nil: not this service's descriptor
		wantErr string
	}{
		{
			name: "the relay's descriptor: api_user, label and the account's budget",
			req: &rlsv3.RateLimitRequest{Domain: "mailfleet", Descriptors: desc(&ratelimitv3.RateLimitDescriptor{
				Entries: entries("api_user", "acme", "label", "1001"), Limit: perMinute(20000)})},
			want: &check{apiUser: "acme", hits: 1, limit: 20000},
		},
		{
			name: "no override: the account's budget from the credentials",
			req:  &rlsv3.RateLimitRequest{Descriptors: desc(&ratelimitv3.RateLimitDescriptor{Entries: entries("api_user", "big")})},
			want: &check{apiUser: "big", hits: 1, limit: 9000},
		},
		{
			name: "no override, account without a budget: the default",
			req:  &rlsv3.RateLimitRequest{Descriptors: desc(&ratelimitv3.RateLimitDescriptor{Entries: entries("api_user", "unset")})},
			want: &check{apiUser: "unset", hits: 1, limit: 500},
		},
		{
			name: "unknown account: the default",
			req:  &rlsv3.RateLimitRequest{Descriptors: desc(&ratelimitv3.RateLimitDescriptor{Entries: entries("api_user", "nobody")})},
			want: &check{apiUser: "nobody", hits: 1, limit: 500},
		},
		{
			name: "request hits_addend",
			req:  &rlsv3.RateLimitRequest{HitsAddend: 7, Descriptors: desc(&ratelimitv3.RateLimitDescriptor{Entries: entries("api_user", "a")})},
			want: &check{apiUser: "a", hits: 7, limit: 500},
		},
		{
			name: "descriptor hits_addend wins over the request's",
			req: &rlsv3.RateLimitRequest{HitsAddend: 7, Descriptors: desc(&ratelimitv3.RateLimitDescriptor{
				Entries: entries("api_user", "a"), HitsAddend: wrapperspb.UInt64(3)})},
			want: &check{apiUser: "a", hits: 3, limit: 500},
		},
		{
			name: "a zero limit override is a limit",
			req: &rlsv3.RateLimitRequest{Descriptors: desc(&ratelimitv3.RateLimitDescriptor{
				Entries: entries("api_user", "a"), Limit: perMinute(0)})},
			want: &check{apiUser: "a", hits: 1, limit: 0},
		},
		{
			name: "another service's descriptor is not counted",
			req:  &rlsv3.RateLimitRequest{Descriptors: desc(&ratelimitv3.RateLimitDescriptor{Entries: entries("remote_address", "10.0.0.1")})},
		},
		{
			name: "api_user with a key this service does not know is not counted",
			req:  &rlsv3.RateLimitRequest{Descriptors: desc(&ratelimitv3.RateLimitDescriptor{Entries: entries("api_user", "a", "path", "/v2/mail")})},
		},
		{name: "no descriptors", req: &rlsv3.RateLimitRequest{}, wantErr: "no descriptors"},
		{
			name:    "empty api_user",
			req:     &rlsv3.RateLimitRequest{Descriptors: desc(&ratelimitv3.RateLimitDescriptor{Entries: entries("api_user", "")})},
			wantErr: "api_user: want 1 to 256 bytes",
		},
		{
			name:    "overlong api_user",
			req:     &rlsv3.RateLimitRequest{Descriptors: desc(&ratelimitv3.RateLimitDescriptor{Entries: entries("api_user", strings.Repeat("x", 257))})},
			wantErr: "api_user: want 1 to 256 bytes",
		},
		{
			name:    "label alone",
			req:     &rlsv3.RateLimitRequest{Descriptors: desc(&ratelimitv3.RateLimitDescriptor{Entries: entries("label", "1001")})},
			wantErr: "label without api_user",
		},
		{
			name:    "api_user twice",
			req:     &rlsv3.RateLimitRequest{Descriptors: desc(&ratelimitv3.RateLimitDescriptor{Entries: entries("api_user", "a", "api_user", "b")})},
			wantErr: "api_user appears twice",
		},
		{
			name: "override per second",
			req: &rlsv3.RateLimitRequest{Descriptors: desc(&ratelimitv3.RateLimitDescriptor{Entries: entries("api_user", "a"),
				Limit: &ratelimitv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 5, Unit: typev3.RateLimitUnit_SECOND}})},
			wantErr: "only MINUTE is counted",
		},
		{
			name: "override per five minutes",
			req: &rlsv3.RateLimitRequest{Descriptors: desc(&ratelimitv3.RateLimitDescriptor{Entries: entries("api_user", "a"),
				Limit: &ratelimitv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 5, Unit: typev3.RateLimitUnit_MINUTE, UnitMultiplier: wrapperspb.UInt32(5)}})},
			wantErr: "only 1 is counted",
		},
		{
			name: "negative hits",
			req: &rlsv3.RateLimitRequest{Descriptors: desc(&ratelimitv3.RateLimitDescriptor{Entries: entries("api_user", "a"),
				HitsAddend: wrapperspb.UInt64(1), IsNegativeHits: true})},
			wantErr: "is_negative_hits is not supported",
		},
		{
			name: "huge hits_addend",
			req: &rlsv3.RateLimitRequest{Descriptors: desc(&ratelimitv3.RateLimitDescriptor{Entries: entries("api_user", "a"),
				HitsAddend: wrapperspb.UInt64(1 << 40)})},
			wantErr: "hits_addend",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.checks(tt.req)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 {
				t.Fatalf("%d checks, want 1", len(got))
			}
			switch {
			case tt.want == nil && got[0] != nil:
				t.Fatalf("got %+v, want the descriptor left alone", *got[0])
			case tt.want != nil && (got[0] == nil || *got[0] != *tt.want):
				t.Fatalf("got %+v, want %+v", got[0], *tt.want)
			}
		})
	}
}

func TestUnitOf(t *testing.T) {
	tests := []struct {
		window time.Duration
		unit   rlsv3.RateLimitResponse_RateLimit_Unit
		mult   uint32 // 0: no multiplier
	}{
		{time.Minute, rlsv3.RateLimitResponse_RateLimit_MINUTE, 0},
		{5 * time.Minute, rlsv3.RateLimitResponse_RateLimit_MINUTE, 5},
		{2 * time.Second, rlsv3.RateLimitResponse_RateLimit_SECOND, 2},
	}
	for _, tt := range tests {
		unit, mult := unitOf(tt.window)
		if unit != tt.unit || mult.GetValue() != tt.mult {
			t.Errorf("unitOf(%v) = %v x %v, want %v x %d", tt.window, unit, mult, tt.unit, tt.mult)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"defaults", Options{}, ""},
		{"failure mode", Options{FailureMode: "maybe"}, `failure mode "maybe"`},
		{"replicas", Options{Replicas: -1}, "replicas -1"},
		{"default limit", Options{DefaultLimit: 1 << 33}, "default limit"},
		{"window", Options{Window: 1500 * time.Millisecond}, "whole number of seconds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewServer(nil, tt.opts)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatal(err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}
