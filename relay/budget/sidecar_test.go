package budget

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/mailfleet/mailfleet/ratelimit"
	"github.com/mailfleet/mailfleet/ratelimit/ratelimittest"
	"github.com/mailfleet/mailfleet/ratelimit/redistest"
)

// fakeSidecar answers ShouldRateLimit with whatever a test says and keeps
// the last request.
type fakeSidecar struct {
	rlsv3.UnimplementedRateLimitServiceServer
	answer func(ctx context.Context) (*rlsv3.RateLimitResponse, error)

	mu   sync.Mutex
	last *rlsv3.RateLimitRequest
}

func (f *fakeSidecar) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	f.mu.Lock()
	f.last = req
	f.mu.Unlock()
	return f.answer(ctx)
}

func (f *fakeSidecar) lastRequest() *rlsv3.RateLimitRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

func serveFake(t testing.TB, f *fakeSidecar) string {
	t.Helper()
	return serveGRPC(t, func(g *grpc.Server) { rlsv3.RegisterRateLimitServiceServer(g, f) })
}

// serveGRPC serves what register puts on a gRPC server on loopback, until
// the test ends, and returns its address.
func serveGRPC(t testing.TB, register func(*grpc.Server)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	register(g)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return ln.Addr().String()
}

// waitConnected waits for conn to be up, so that a test's first decision
// is not also the one that connects: on a loaded machine (-race, busy
// CPUs) connecting alone can take longer than a 100 ms timeout.
func waitConnected(t testing.TB, conn *grpc.ClientConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for st := conn.GetState(); st != connectivity.Ready; st = conn.GetState() {
		if !conn.WaitForStateChange(ctx, st) {
			t.Fatalf("sidecar connection still %v", st)
		}
	}
}

func newTestSidecar(t testing.TB, addr string, timeout time.Duration) *Sidecar {
	t.Helper()
	s, err := NewSidecar(SidecarOptions{Address: addr, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

const clientTimeout = 100 * time.Millisecond

// slack is what a decision may take beyond its timeout on a busy machine.
const slack = 250 * time.Millisecond

func TestSidecarMapsAnswersToDecisions(t *testing.T) {
	code := func(c rlsv3.RateLimitResponse_Code) func(context.Context) (*rlsv3.RateLimitResponse, error) {
		return func(context.Context) (*rlsv3.RateLimitResponse, error) {
			return &rlsv3.RateLimitResponse{OverallCode: c}, nil
		}
	}
	fail := func(c codes.Code) func(context.Context) (*rlsv3.RateLimitResponse, error) {
		return func(context.Context) (*rlsv3.RateLimitResponse, error) {
			return nil, status.Error(c, "test")
		}
	}
	tests := []struct {
		name   string
		answer func(context.Context) (*rlsv3.RateLimitResponse, error)
		want   Decision
	}{
		{"OK admits", code(rlsv3.RateLimitResponse_OK), Allow},
		{"OVER_LIMIT is over budget (536)", code(rlsv3.RateLimitResponse_OVER_LIMIT), OverLimit},
		{"UNKNOWN is no answer", code(rlsv3.RateLimitResponse_UNKNOWN), Unavailable},
		{"failure mode deny: Unavailable is 451, not 536", fail(codes.Unavailable), Unavailable},
		{"any other error", fail(codes.Internal), Unavailable},
		{"no answer within the timeout", func(ctx context.Context) (*rlsv3.RateLimitResponse, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}, Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeSidecar{answer: tt.answer}
			s := newTestSidecar(t, serveFake(t, f), clientTimeout)
			waitConnected(t, s.conn)
			start := time.Now()
			got := s.Take(context.Background(), Request{APIUser: "acme", LabelID: "1001", Limit: 20000})
			if took := time.Since(start); took > clientTimeout+slack {
				t.Errorf("Take took %v, past its %v timeout", took, clientTimeout)
			}
			if got != tt.want {
				t.Fatalf("decision %v, want %v", got, tt.want)
			}
		})
	}
}

// TestSidecarRequest checks what the relay asks: the account and label as
// descriptor entries, and the account's budget as a per-minute override.
func TestSidecarRequest(t *testing.T) {
	f := &fakeSidecar{answer: func(context.Context) (*rlsv3.RateLimitResponse, error) {
		return &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}, nil
	}}
	s := newTestSidecar(t, serveFake(t, f), time.Second)
	tests := []struct {
		req     Request
		entries map[string]string
		hits    uint32
	}{
		{Request{APIUser: "acme", LabelID: "1001", Limit: 20000}, map[string]string{"api_user": "acme", "label": "1001"}, 1},
		{Request{APIUser: "acme", Limit: 5, Hits: 3}, map[string]string{"api_user": "acme"}, 3},
	}
	for _, tt := range tests {
		if d := s.Take(context.Background(), tt.req); d != Allow {
			t.Fatalf("%+v: %v", tt.req, d)
		}
		got := f.lastRequest()
		if got.GetDomain() != SidecarDomain || len(got.GetDescriptors()) != 1 || got.GetHitsAddend() != tt.hits {
			t.Fatalf("%+v: request %v", tt.req, got)
		}
		d := got.GetDescriptors()[0]
		entries := map[string]string{}
		for _, e := range d.GetEntries() {
			entries[e.GetKey()] = e.GetValue()
		}
		if len(entries) != len(tt.entries) || len(d.GetEntries()) != len(tt.entries) {
			t.Fatalf("%+v: entries %v, want %v", tt.req, entries, tt.entries)
		}
		for k, v := range tt.entries {
			if entries[k] != v {
				t.Fatalf("%+v: entries %v, want %v", tt.req, entries, tt.entries)
			}
		}
		if l := d.GetLimit(); l.GetRequestsPerUnit() != uint32(tt.req.Limit) || l.GetUnit() != typev3.RateLimitUnit_MINUTE {
			t.Fatalf("%+v: limit override %v", tt.req, l)
		}
	}
}

func TestSidecarZeroBudgetAsksNothing(t *testing.T) {
	f := &fakeSidecar{answer: func(context.Context) (*rlsv3.RateLimitResponse, error) {
		t.Error("the sidecar was asked about a zero budget")
		return nil, status.Error(codes.Internal, "unexpected")
	}}
	s := newTestSidecar(t, serveFake(t, f), time.Second)
	if d := s.Take(context.Background(), Request{APIUser: "acme", Limit: 0}); d != OverLimit {
		t.Fatalf("zero budget: %v, want over_limit", d)
	}
}

func TestSidecarNotListening(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := newTestSidecar(t, addr, clientTimeout)
	start := time.Now()
	if d := s.Take(context.Background(), Request{APIUser: "acme", Limit: 10}); d != Unavailable {
		t.Fatalf("no sidecar: %v, want unavailable", d)
	}
	if took := time.Since(start); took > clientTimeout+slack {
		t.Fatalf("no sidecar: Take took %v", took)
	}
}

func TestNewSidecarWantsLoopback(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:8081", "[::1]:8081", "localhost:8081"} {
		s, err := NewSidecar(SidecarOptions{Address: addr})
		if err != nil {
			t.Errorf("%s: %v", addr, err)
			continue
		}
		s.Close()
	}
	for _, addr := range []string{"10.0.0.7:8081", "ratelimit:8081", "127.0.0.1"} {
		if _, err := NewSidecar(SidecarOptions{Address: addr}); err == nil {
			t.Errorf("%s: accepted", addr)
		}
	}
}

// TestSidecarAgainstRatelimit runs the client against the real sidecar and
// Redis: exactly the budget is admitted, then 536; with Redis gone the
// failure mode decides, and deny is 451, never 536.
func TestSidecarAgainstRatelimit(t *testing.T) {
	tests := []struct {
		mode        ratelimit.FailureMode
		whenRedisUp []Decision
		redisDown   Decision
	}{
		{ratelimit.FailureAllow, []Decision{Allow, Allow, Allow, OverLimit, OverLimit}, Allow},
		{ratelimit.FailureDeny, []Decision{Allow, Allow, Allow, OverLimit}, Unavailable},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			r := redistest.StartRedis(t)
			// Redis gets seconds, not the default 50 ms: on a loaded
			// machine the first call (a new connection, the script
			// loaded) took longer, and deny mode answered Unavailable
			// with Redis up. The deadline is not what this test is about.
			sc := ratelimittest.StartSidecar(t, r.Addr, ratelimit.Options{Window: time.Hour, FailureMode: tt.mode, Deadline: 5 * time.Second})
			s := newTestSidecar(t, sc.Addr, time.Second)
			user := "acme-" + string(tt.mode)
			for i, want := range tt.whenRedisUp {
				if got := s.Take(context.Background(), Request{APIUser: user, LabelID: "1001", Limit: 3}); got != want {
					t.Fatalf("call %d: %v, want %v", i, got, want)
				}
			}
			r.Kill()
			if got := s.Take(context.Background(), Request{APIUser: "fresh", Limit: 3}); got != tt.redisDown {
				t.Fatalf("Redis down, failure mode %s: %v, want %v", tt.mode, got, tt.redisDown)
			}
		})
	}
}
