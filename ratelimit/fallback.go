package ratelimit

import (
	"sync"
	"time"
)

// fallback is the per-pod limiter used while Redis cannot answer and the
// failure mode is allow. Each pod admits its share of the account's limit,
// limit/replicas, so the fleet together stays near the budget without
// sharing anything.
type fallback struct {
	length   time.Duration
	replicas int64
	now      func() time.Time

	mu     sync.Mutex
	window int64
	counts map[string]int64
}

func newFallback(length time.Duration, replicas int) *fallback {
	return &fallback{
		length:   length,
		replicas: int64(max(replicas, 1)),
		now:      time.Now,
		counts:   map[string]int64{},
	}
}

// share is this pod's part of limit. It is at least one for any positive
// limit, so a small account is not shut out entirely by a large fleet.
func (f *fallback) share(limit int64) int64 {
	if limit <= 0 {
		return 0
	}
	return max(limit/f.replicas, 1)
}

// take counts hits for apiUser in the local clock's window unless that would
// exceed the pod's share; like the Redis script, a refused call is not counted.
func (f *fallback) take(apiUser string, hits, limit int64) Result {
	now := f.now()
	length := int64(f.length / time.Second)
	window := now.Unix() / length
	end := time.Unix((window+1)*length, 0)
	share := f.share(limit)

	f.mu.Lock()
	defer f.mu.Unlock()
	if window != f.window {
		f.window = window
		clear(f.counts)
	}
	res := Result{Limit: share, ResetIn: end.Sub(now), Window: window}
	count := f.counts[apiUser]
	if hits <= 0 || count+hits > share {
		res.Count = count
		return res
	}
	f.counts[apiUser] = count + hits
	res.Allowed, res.Count = true, count+hits
	return res
}
