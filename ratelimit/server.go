// Package ratelimit is the fleet-wide budget: a sidecar that speaks Envoy's
// rate limit service API (envoy.service.ratelimit.v3) and counts calls per
// api_user per minute in Redis, so that every relay pod, and any HTTP gateway
// that asks the same service, draws from one budget per account.
//
// Counting is a fixed calendar window, decided by one Lua script on Redis's
// clock (see Counter). Beside the rate limit service the same server speaks
// the relays' lease service (leasewire, leaseserver.go): a relay takes
// blocks of an account's budget from the same counters and decides messages
// from them itself, so gateways asking ShouldRateLimit and relays holding
// leases share each budget exactly. When Redis cannot answer within the decision deadline
// the failure mode decides: allow answers from a per-pod fallback limiter at
// the account's limit divided by the replicas; deny answers with the gRPC
// status Unavailable, which the relay turns into 451 4.7.1 (try again later)
// and never into 536, since the account is not known to be over budget.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strings"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/budget/leasewire"
	"github.com/mailfleet/mailfleet/relay/credentials"
)

// Descriptor entry keys this service counts on. A descriptor made of
// api_user, and optionally label, is an account's budget; the label is
// accepted so gateways and the relay can send what they know, but the budget
// is the account's, shared by all its labels.
const (
	EntryAPIUser = "api_user"
	EntryLabel   = "label"
)

// FailureMode says what to answer when Redis cannot.
type FailureMode string

const (
	// FailureAllow answers from the pod's fallback limiter.
	FailureAllow FailureMode = "allow"
	// FailureDeny answers gRPC Unavailable: the caller should try later.
	FailureDeny FailureMode = "deny"
)

// ParseFailureMode reads a --failure-mode value.
func ParseFailureMode(s string) (FailureMode, error) {
	switch m := FailureMode(s); m {
	case FailureAllow, FailureDeny:
		return m, nil
	}
	return "", fmt.Errorf("failure mode %q: want allow or deny", s)
}

// Options configure a Server; zero values take the defaults.
type Options struct {
	// Window is the counting window, calendar-aligned (default one minute;
	// tests shorten it to cross window boundaries quickly).
	Window time.Duration
	// Deadline bounds each Redis call (default 50 ms).
	Deadline time.Duration
	// FailureMode applies when Redis fails or misses the deadline (default allow).
	FailureMode FailureMode
	// DefaultLimit is the budget per window of an account whose descriptor
	// carries no limit override and that Limits does not know (default 30,000).
	DefaultLimit int64
	// Replicas is how many sidecars share the budget; the fallback limiter
	// admits DefaultLimit/Replicas per pod (default 1).
	Replicas int
	// Cooldown is how long decisions skip Redis after it failed repeatedly
	// (default one second).
	Cooldown time.Duration
	// Scope names the fleet whose budgets this server counts, the relay's
	// namespace/name: fleets sharing one Redis never share a counter. Empty
	// counts by api_user alone.
	Scope string
	// Limits, when set, gives per-account budgets for descriptors without a
	// limit override (the relay always sends one; a gateway may not).
	Limits credentials.Source
	// Metrics defaults to metrics on a private registry.
	Metrics *Metrics
	// Log defaults to discarding.
	Log *slog.Logger
}

// perScriptShare: each script of a batch beyond the first adds
// 1/perScriptShare of the deadline (a 512-lease batch: 50 ms + 200 ms).
const perScriptShare = 128

// Defaults for Options.
const (
	DefaultWindow   = time.Minute
	DefaultDeadline = 50 * time.Millisecond
	DefaultCooldown = time.Second
)

func (o *Options) defaults() {
	if o.Window == 0 {
		o.Window = DefaultWindow
	}
	if o.Deadline == 0 {
		o.Deadline = DefaultDeadline
	}
	if o.FailureMode == "" {
		o.FailureMode = FailureAllow
	}
	if o.DefaultLimit == 0 {
		o.DefaultLimit = wire.DefaultBudgetPerMinute
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.Cooldown == 0 {
		o.Cooldown = DefaultCooldown
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

func (o *Options) validate() error {
	var errs []error
	if o.Deadline < 0 || o.Cooldown < 0 {
		errs = append(errs, errors.New("deadline and cooldown must be positive"))
	}
	if _, err := ParseFailureMode(string(o.FailureMode)); err != nil {
		errs = append(errs, err)
	}
	if o.DefaultLimit < 0 || o.DefaultLimit > math.MaxUint32 {
		errs = append(errs, fmt.Errorf("default limit %d: want 0 to %d", o.DefaultLimit, uint32(math.MaxUint32)))
	}
	if strings.ContainsAny(o.Scope, "{}|") {
		errs = append(errs, fmt.Errorf("scope %q: must not contain '{', '}' or '|'", o.Scope))
	}
	if o.Replicas < 1 {
		errs = append(errs, fmt.Errorf("replicas %d: want at least 1", o.Replicas))
	}
	return errors.Join(errs...)
}

// Server answers ShouldRateLimit.
type Server struct {
	rlsv3.UnimplementedRateLimitServiceServer

	opts     Options
	counter  *Counter
	fallback *fallback
	breaker  breaker
	unit     rlsv3.RateLimitResponse_RateLimit_Unit
	perUnits *wrapperspb.UInt32Value
}

// NewServer counts through client (a go-redis client, see NewRedisClient).
func NewServer(client Redis, opts Options) (*Server, error) {
	opts.defaults()
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("rate limit server: %w", err)
	}
	counter, err := NewCounter(client, opts.Window)
	if err != nil {
		return nil, fmt.Errorf("rate limit server: %w", err)
	}
	s := &Server{
		opts:     opts,
		counter:  counter.Scoped(opts.Scope),
		fallback: newFallback(opts.Window, opts.Replicas),
		breaker:  breaker{cooldown: opts.Cooldown},
	}
	s.unit, s.perUnits = unitOf(opts.Window)
	return s, nil
}

// NewGRPCServer returns a gRPC server with s (the rate limit service and the
// relays' lease service) and a health service on it. The
// health service always reports SERVING: the sidecar can decide (through its
// failure mode) even while Redis is down, so Redis's state must not make
// Kubernetes restart it.
func NewGRPCServer(s *Server, opts ...grpc.ServerOption) *grpc.Server {
	g := grpc.NewServer(opts...)
	rlsv3.RegisterRateLimitServiceServer(g, s)
	leasewire.RegisterServer(g, s)
	healthpb.RegisterHealthServer(g, health.NewServer())
	return g
}

// ShouldRateLimit implements envoy.service.ratelimit.v3.RateLimitService.
//
// Every descriptor whose entries are api_user (and optionally label) counts
// hits against that account; other descriptors are not this service's and
// are answered OK. The domain is ignored on purpose: the relay's SMTP calls
// and a gateway's HTTP calls count against the same budget.
func (s *Server) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	start := time.Now()
	resp, outcome, err := s.decide(ctx, req)
	s.opts.Metrics.decided(outcome, time.Since(start))
	return resp, err
}

// errDenied travels to the caller as gRPC Unavailable: Envoy applies its own
// failure_mode_deny to any gRPC error, and the relay answers 451 4.7.1. An
// OVER_LIMIT carrying a marker would instead make Envoy answer 429 and tell
// the client it is over budget, which nobody knows while Redis is down.
var errDenied = status.Error(codes.Unavailable, "rate limit counters unavailable (failure mode deny)")

func (s *Server) decide(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, string, error) {
	checks, err := s.checks(req)
	if err != nil {
		return nil, OutcomeInvalid, status.Error(codes.InvalidArgument, err.Error())
	}
	resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}
	var usedFallback, refused bool
	for _, c := range checks {
		if c == nil {
			resp.Statuses = append(resp.Statuses, &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK})
			continue
		}
		res, fromFallback, err := s.take(ctx, *c)
		switch {
		case errors.Is(err, errDenied):
			return nil, OutcomeFailureDenied, err
		case err != nil:
			return nil, OutcomeCanceled, err
		}
		usedFallback = usedFallback || fromFallback
		refused = refused || !res.Allowed
		resp.Statuses = append(resp.Statuses, s.status(res))
	}
	if refused {
		resp.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
	}
	return resp, outcomeOf(usedFallback, refused), nil
}

func outcomeOf(usedFallback, refused bool) string {
	switch {
	case usedFallback && refused:
		return OutcomeFailureOverLimit
	case usedFallback:
		return OutcomeFailureAllowed
	case refused:
		return OutcomeOverLimit
	}
	return OutcomeOK
}

// take decides one account's hits: Redis, or the failure mode when Redis
// fails, misses the deadline or has just been failing.
func (s *Server) take(ctx context.Context, c check) (Result, bool, error) {
	var res Result
	err := s.inRedis(ctx, func(rctx context.Context) (err error) {
		res, err = s.counter.Take(rctx, c.apiUser, c.hits, c.limit)
		return err
	})
	if !errors.Is(err, errRedisDown) {
		return res, false, err
	}
	if s.opts.FailureMode == FailureDeny {
		return Result{}, false, errDenied
	}
	s.opts.Metrics.fallback.Inc()
	return s.fallback.take(c.apiUser, c.hits, c.limit), true, nil
}

// errRedisDown says Redis did not answer (it failed, missed the deadline,
// or the breaker skipped it): the failure mode decides.
var errRedisDown = errors.New("redis did not answer")

// inRedis runs call with the decision deadline unless the breaker says
// Redis has just been failing, and keeps the breaker and the error metrics.
// It returns errRedisDown when the failure mode should decide, and a gRPC
// status when the caller gave up first (which is not Redis's failure).
func (s *Server) inRedis(ctx context.Context, call func(context.Context) error) error {
	return s.inRedisN(ctx, 1, call)
}

// inRedisN is inRedis for a call of n scripts in one pipeline.
func (s *Server) inRedisN(ctx context.Context, n int, call func(context.Context) error) error {
	if !s.breaker.allow(time.Now()) {
		s.opts.Metrics.skipped.Inc()
		return errRedisDown
	}
	rctx, cancel := context.WithTimeout(ctx, s.redisDeadline(ctx, n))
	defer cancel()
	if err := call(rctx); err != nil {
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		s.opts.Metrics.redisFailed(err)
		if s.breaker.failure(time.Now()) {
			s.opts.Log.Warn("redis is failing; deciding by the failure mode",
				"failure_mode", s.opts.FailureMode, "retry_after", s.opts.Cooldown, "err", err)
		}
		return errRedisDown
	}
	if s.breaker.success() {
		s.opts.Log.Info("redis answers again; counting in redis")
	}
	return nil
}

// redisDeadline is the decision deadline for a call of n scripts,
// shortened when the caller's own deadline is nearer: Redis then gets four
// fifths of what is left, so the failure mode's answer still reaches a
// caller that set a tight timeout instead of the caller timing out first
// and applying its own policy.
//
// Each script beyond the first adds 1/perScriptShare of the deadline: a
// relay's batch of hundreds of leases (its refills, or every account's
// lease on the next window) takes Redis longer than one decision, and
// holding it to one decision's deadline made such batches miss it under
// load: every account got the fallback's nothing instead of a lease, and
// each miss counted toward opening the breaker for every caller.
func (s *Server) redisDeadline(ctx context.Context, n int) time.Duration {
	d := s.opts.Deadline + time.Duration(max(n-1, 0))*s.opts.Deadline/perScriptShare
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl) * 4 / 5; left < d {
			d = left
		}
	}
	return d
}

func (s *Server) status(res Result) *rlsv3.RateLimitResponse_DescriptorStatus {
	code := rlsv3.RateLimitResponse_OK
	if !res.Allowed {
		code = rlsv3.RateLimitResponse_OVER_LIMIT
	}
	return &rlsv3.RateLimitResponse_DescriptorStatus{
		Code: code,
		CurrentLimit: &rlsv3.RateLimitResponse_RateLimit{
			RequestsPerUnit: uint32(min(res.Limit, math.MaxUint32)),
			Unit:            s.unit,
			UnitMultiplier:  s.perUnits,
		},
		LimitRemaining:     uint32(min(res.Remaining(), math.MaxUint32)),
		DurationUntilReset: durationpb.New(res.ResetIn),
	}
}

// unitOf describes the window in the response's terms: minutes when it is
// whole minutes (production), else seconds.
func unitOf(window time.Duration) (rlsv3.RateLimitResponse_RateLimit_Unit, *wrapperspb.UInt32Value) {
	if window%time.Minute == 0 {
		if n := window / time.Minute; n != 1 {
			return rlsv3.RateLimitResponse_RateLimit_MINUTE, wrapperspb.UInt32(uint32(n))
		}
		return rlsv3.RateLimitResponse_RateLimit_MINUTE, nil
	}
	return rlsv3.RateLimitResponse_RateLimit_SECOND, wrapperspb.UInt32(uint32(window / time.Second))
}

// isTimeout reports a network timeout (go-redis's socket deadlines).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
