package ratelimit

import (
	"errors"
	"fmt"
	"math"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

// check is one account's part of a request.
type check struct {
	apiUser     string
	hits, limit int64
}

// maxAPIUser bounds the api_user a gateway may send: it becomes part of a
// Redis key.
const maxAPIUser = 256

// checks reads the descriptors; a nil entry is a descriptor that is not an
// account's budget.
func (s *Server) checks(req *rlsv3.RateLimitRequest) ([]*check, error) {
	if len(req.GetDescriptors()) == 0 {
		return nil, errors.New("no descriptors")
	}
	out := make([]*check, 0, len(req.GetDescriptors()))
	for i, d := range req.GetDescriptors() {
		c, err := s.check(d, req.GetHitsAddend())
		if err != nil {
			return nil, fmt.Errorf("descriptors[%d]: %w", i, err)
		}
		out = append(out, c)
	}
	return out, nil
}

func (s *Server) check(d *ratelimitv3.RateLimitDescriptor, requestHits uint32) (*check, error) {
	user, err := apiUserOf(d.GetEntries())
	if err != nil || user == "" {
		return nil, err
	}
	if d.GetIsNegativeHits() {
		return nil, errors.New("is_negative_hits is not supported")
	}
	hits, err := hitsOf(d, requestHits)
	if err != nil {
		return nil, err
	}
	limit, err := s.limitOf(user, d.GetLimit())
	if err != nil {
		return nil, err
	}
	return &check{apiUser: user, hits: hits, limit: limit}, nil
}

// apiUserOf returns the descriptor's api_user, or "" when the descriptor is
// not made of api_user and label entries only (some other limit a gateway
// asks about, which this service does not keep).
func apiUserOf(entries []*ratelimitv3.RateLimitDescriptor_Entry) (string, error) {
	var user string
	var hasUser, hasLabel bool
	for _, e := range entries {
		switch e.GetKey() {
		case EntryAPIUser:
			if hasUser {
				return "", errors.New("api_user appears twice")
			}
			hasUser, user = true, e.GetValue()
		case EntryLabel:
			if hasLabel {
				return "", errors.New("label appears twice")
			}
			hasLabel = true
		default:
			return "", nil
		}
	}
	switch {
	case hasLabel && !hasUser:
		return "", errors.New("label without api_user")
	case hasUser:
		if err := checkAPIUser(user); err != nil {
			return "", err
		}
	}
	return user, nil
}

// maxHits bounds hits_addend, far above any limit, so arithmetic in Lua's
// doubles stays exact.
const maxHits = math.MaxUint32

// hitsOf is the descriptor's hits_addend when set and positive, else the
// request's when positive, else 1 (the API's default).
func hitsOf(d *ratelimitv3.RateLimitDescriptor, requestHits uint32) (int64, error) {
	if h := d.GetHitsAddend(); h != nil && h.GetValue() > 0 {
		if h.GetValue() > maxHits {
			return 0, fmt.Errorf("hits_addend %d: want at most %d", h.GetValue(), uint64(maxHits))
		}
		return int64(h.GetValue()), nil
	}
	if requestHits > 0 {
		return int64(requestHits), nil
	}
	return 1, nil
}

// limitOf is the descriptor's override (per minute: the relay sends each
// account's budget that way), else the account's budget from Limits, else
// the default. The server counts per its window, which is a minute except
// in tests.
func (s *Server) limitOf(apiUser string, override *ratelimitv3.RateLimitDescriptor_RateLimitOverride) (int64, error) {
	if override != nil {
		if override.GetUnit() != typev3.RateLimitUnit_MINUTE {
			return 0, fmt.Errorf("limit override unit %v: only MINUTE is counted", override.GetUnit())
		}
		if m := override.GetUnitMultiplier(); m != nil && m.GetValue() != 1 {
			return 0, fmt.Errorf("limit override unit_multiplier %d: only 1 is counted", m.GetValue())
		}
		return int64(override.GetRequestsPerUnit()), nil
	}
	if s.opts.Limits != nil {
		if acct, ok := s.opts.Limits.Lookup(apiUser); ok && acct.BudgetPerMinute > 0 {
			return int64(acct.BudgetPerMinute), nil
		}
	}
	return s.opts.DefaultLimit, nil
}
