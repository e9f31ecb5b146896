package budget

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync/atomic"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// SidecarDomain is the rate limit domain the relay asks in. The sidecar
// counts an account's calls whatever the domain, so a gateway may use its own.
const SidecarDomain = "mailfleet"

// DefaultSidecarTimeout bounds one question to the sidecar. It is twice the
// sidecar's default Redis deadline, so that when Redis is slow the sidecar's
// failure mode (fallback or deny) answers before the relay gives up on its
// own and answers 451.
const DefaultSidecarTimeout = 100 * time.Millisecond

// SidecarOptions say how to reach the rate-limit sidecar.
type SidecarOptions struct {
	// Address is the sidecar's gRPC address, on loopback.
	Address string
	// Timeout bounds each decision (default DefaultSidecarTimeout).
	Timeout time.Duration
	// Log defaults to discarding.
	Log *slog.Logger
}

// Sidecar is the fleet-wide budget: it asks the rate-limit sidecar in the
// pod (mailfleet ratelimit, an Envoy rate limit service) over one long-lived
// gRPC connection. Any failure to get an answer in time is Unavailable, so
// the client hears 451 4.7.1 (try later) and never 536, which would tell it
// that it is over budget.
type Sidecar struct {
	sidecarHealth
	conn    *grpc.ClientConn
	client  rlsv3.RateLimitServiceClient
	timeout time.Duration
}

// NewSidecar connects to the sidecar in the background; Take works as soon
// as the connection is up and answers Unavailable until then.
func NewSidecar(o SidecarOptions) (*Sidecar, error) {
	o.defaults()
	conn, err := dialSidecar(o.Address)
	if err != nil {
		return nil, err
	}
	return newSidecar(conn, o), nil
}

func newSidecar(conn *grpc.ClientConn, o SidecarOptions) *Sidecar {
	return &Sidecar{sidecarHealth: sidecarHealth{log: o.Log}, conn: conn, client: rlsv3.NewRateLimitServiceClient(conn), timeout: o.Timeout}
}

func (o *SidecarOptions) defaults() {
	if o.Timeout <= 0 {
		o.Timeout = DefaultSidecarTimeout
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// dialSidecar connects to the sidecar on loopback in the background.
func dialSidecar(address string) (*grpc.ClientConn, error) {
	if err := checkLoopback(address); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("passthrough:///"+address,
		// Plain text is fine on loopback, and only there (checkLoopback).
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// gRPC's default reconnect backoff grows to two minutes; a sidecar
		// restarting in the same pod is back within seconds, and every
		// second without it is a second of 451s.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("budget sidecar %s: %w", address, err)
	}
	conn.Connect()
	return conn, nil
}

// checkLoopback refuses a sidecar address off the machine: the connection
// is not encrypted, and the sidecar belongs in the relay's pod.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("budget sidecar address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("budget sidecar address %q: want a loopback address, the connection is not encrypted", addr)
	}
	return nil
}

// Take asks the sidecar to count one call of req.APIUser against
// req.Limit per minute.
func (s *Sidecar) Take(ctx context.Context, req Request) Decision {
	if req.Limit <= 0 {
		return OverLimit // nothing to ask: a zero budget admits nothing
	}
	callCtx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.client.ShouldRateLimit(callCtx, sidecarRequest(req))
	if err != nil {
		if ctx.Err() == nil { // not just the session going away
			s.failed(err)
		}
		return Unavailable
	}
	s.answered()
	switch resp.GetOverallCode() {
	case rlsv3.RateLimitResponse_OK:
		return Allow
	case rlsv3.RateLimitResponse_OVER_LIMIT:
		return OverLimit
	}
	s.failed(fmt.Errorf("sidecar answered %v", resp.GetOverallCode()))
	return Unavailable
}

// sidecarRequest is one descriptor: the account (and label, which the
// sidecar accepts but does not count separately), with the account's budget
// as the limit override, so the sidecar needs no copy of the accounts.
func sidecarRequest(req Request) *rlsv3.RateLimitRequest {
	entries := []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "api_user", Value: req.APIUser}}
	if req.LabelID != "" {
		entries = append(entries, &ratelimitv3.RateLimitDescriptor_Entry{Key: "label", Value: req.LabelID})
	}
	return &rlsv3.RateLimitRequest{
		Domain:     SidecarDomain,
		HitsAddend: uint32(min(int64(req.hits()), math.MaxUint32)),
		Descriptors: []*ratelimitv3.RateLimitDescriptor{{
			Entries: entries,
			Limit: &ratelimitv3.RateLimitDescriptor_RateLimitOverride{
				RequestsPerUnit: uint32(min(int64(req.Limit), math.MaxUint32)),
				Unit:            typev3.RateLimitUnit_MINUTE,
			},
		}},
	}
}

// sidecarHealth logs the first failure of a run of them, and the end of
// the run; the relay's metrics count every refusal a failure causes.
type sidecarHealth struct {
	log     *slog.Logger
	failing atomic.Bool
}

func (h *sidecarHealth) failed(err error) {
	if !h.failing.Swap(true) {
		h.log.Warn("budget sidecar is not answering; refusing with 451 until it does", "err", err)
	}
}

func (h *sidecarHealth) answered() {
	if h.failing.Load() && h.failing.Swap(false) {
		h.log.Info("budget sidecar answers again")
	}
}

// Close closes the connection.
func (s *Sidecar) Close() error {
	return closeConn(s.conn)
}

func closeConn(conn *grpc.ClientConn) error {
	if err := conn.Close(); err != nil {
		return fmt.Errorf("close budget sidecar connection: %w", err)
	}
	return nil
}
