package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mailfleet/mailfleet/relay/budget/leasewire"
)

// The sidecar's lease service (leasewire): relays take blocks of accounts'
// budgets from the same Redis counters ShouldRateLimit counts in and decide
// messages from them locally. The failure modes apply to a lease as they do
// to a call: allow grants from the pod's fallback limiter exactly what the
// message needs (a decision, never a block, and never returned); deny
// answers gRPC Unavailable, which the relay turns into 451.

var _ leasewire.Server = (*Server)(nil)

// maxHolder bounds a holder's name: it becomes a Redis hash field.
const maxHolder = 128

// TakeLeases implements leasewire.Server: every ask in one Redis round
// trip, or all of them by the failure mode.
func (s *Server) TakeLeases(ctx context.Context, req *leasewire.TakeRequest) (*leasewire.TakeReply, error) {
	if err := s.checkLeaseTake(req); err != nil {
		s.opts.Metrics.leaseCall(leaseTake, OutcomeInvalid)
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	asks := make([]LeaseAsk, len(req.Asks))
	for i, a := range req.Asks {
		asks[i] = LeaseAsk{APIUser: a.APIUser, Want: a.Want, Need: a.Need, Limit: a.Limit, Next: a.Next}
	}
	var leases []Lease
	err := s.inRedisN(ctx, len(asks), func(rctx context.Context) (err error) {
		leases, err = s.counter.Leases(rctx, req.Holder, asks)
		return err
	})
	reply := &leasewire.TakeReply{Grants: make([]leasewire.Grant, len(asks))}
	window := s.opts.Window.Microseconds()
	outcome := OutcomeOK
	switch {
	case err == nil:
		for i, l := range leases {
			reply.Grants[i] = leasewire.Grant{
				Units: l.Units, Left: l.Left, Window: l.Window, WindowMicros: window,
				StartsInMicros: l.StartsIn.Microseconds(), EndsInMicros: l.EndsIn.Microseconds(),
			}
		}
	case !errors.Is(err, errRedisDown):
		s.opts.Metrics.leaseCall(leaseTake, OutcomeCanceled)
		return nil, err
	case s.opts.FailureMode == FailureDeny:
		s.opts.Metrics.leaseCall(leaseTake, OutcomeFailureDenied)
		return nil, errDenied
	default:
		// The fallback decides each message (Need), as it would a call: a
		// block from it would be a share of a budget nobody is counting.
		outcome = OutcomeFailureAllowed
		for i, a := range asks {
			s.opts.Metrics.fallback.Inc()
			res := s.fallback.take(a.APIUser, a.Need, a.Limit)
			g := leasewire.Grant{
				Left: res.Remaining(), Window: res.Window, Fallback: true, WindowMicros: window,
				StartsInMicros: (res.ResetIn - s.opts.Window).Microseconds(), EndsInMicros: res.ResetIn.Microseconds(),
			}
			if res.Allowed {
				g.Units = a.Need
			}
			reply.Grants[i] = g
		}
	}
	for _, g := range reply.Grants {
		s.opts.Metrics.leaseUnits.WithLabelValues(leaseGranted).Add(float64(g.Units))
	}
	s.opts.Metrics.leaseCall(leaseTake, outcome)
	return reply, nil
}

// ReturnLeases implements leasewire.Server. A return that Redis cannot take
// fails: the units stay counted until their window ends, which admits less,
// never more.
func (s *Server) ReturnLeases(ctx context.Context, req *leasewire.ReturnRequest) (*leasewire.ReturnReply, error) {
	if err := s.checkLeaseReturn(req); err != nil {
		s.opts.Metrics.leaseCall(leaseReturn, OutcomeInvalid)
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	unused := make([]Unused, len(req.Unused))
	for i, u := range req.Unused {
		unused[i] = Unused{APIUser: u.APIUser, Window: u.Window, Units: u.Units}
	}
	var returned []int64
	err := s.inRedisN(ctx, len(unused), func(rctx context.Context) (err error) {
		returned, err = s.counter.Returns(rctx, req.Holder, unused)
		return err
	})
	switch {
	case errors.Is(err, errRedisDown):
		s.opts.Metrics.leaseCall(leaseReturn, OutcomeNotReturned)
		return nil, status.Error(codes.Unavailable, "rate limit counters unavailable: unused units stay counted until their window ends")
	case err != nil:
		s.opts.Metrics.leaseCall(leaseReturn, OutcomeCanceled)
		return nil, err
	}
	for _, n := range returned {
		s.opts.Metrics.leaseUnits.WithLabelValues(leaseReturned).Add(float64(n))
	}
	s.opts.Metrics.leaseCall(leaseReturn, OutcomeOK)
	return &leasewire.ReturnReply{Returned: returned}, nil
}

func (s *Server) checkLeaseTake(req *leasewire.TakeRequest) error {
	if err := checkLeaseBatch(req.Holder, len(req.Asks)); err != nil {
		return err
	}
	for i, a := range req.Asks {
		if err := checkAPIUser(a.APIUser); err != nil {
			return fmt.Errorf("asks[%d]: %w", i, err)
		}
		if a.Limit < 0 || a.Limit > math.MaxUint32 || a.Want < 0 || a.Want > maxHits || a.Need < 0 || a.Need > maxHits {
			return fmt.Errorf("asks[%d]: limit, want and need: want 0 to %d", i, uint64(maxHits))
		}
	}
	return nil
}

func (s *Server) checkLeaseReturn(req *leasewire.ReturnRequest) error {
	if err := checkLeaseBatch(req.Holder, len(req.Unused)); err != nil {
		return err
	}
	for i, u := range req.Unused {
		if err := checkAPIUser(u.APIUser); err != nil {
			return fmt.Errorf("unused[%d]: %w", i, err)
		}
		if u.Units < 0 || u.Units > maxHits {
			return fmt.Errorf("unused[%d]: units: want 0 to %d", i, uint64(maxHits))
		}
	}
	return nil
}

func checkLeaseBatch(holder string, items int) error {
	if holder == "" || len(holder) > maxHolder {
		return fmt.Errorf("holder: want 1 to %d bytes", maxHolder)
	}
	if items == 0 || items > leasewire.MaxItems {
		return fmt.Errorf("%d items: want 1 to %d", items, leasewire.MaxItems)
	}
	return nil
}

// checkAPIUser bounds an api_user that becomes part of a Redis key.
func checkAPIUser(user string) error {
	if user == "" || len(user) > maxAPIUser {
		return fmt.Errorf("api_user: want 1 to %d bytes", maxAPIUser)
	}
	return nil
}
