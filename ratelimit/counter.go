package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// takeScript is the whole shared-counter protocol, run atomically by Redis.
//
//   - The window comes from Redis TIME, not from the caller, so sidecars on
//     nodes with skewed clocks still count into the same window.
//   - A call that would take the count over the limit is refused and not
//     counted, so a client hammering over budget does not eat into anything.
//   - KEYS[1] is the hash tag "{<api_user>}"; the window's key is derived
//     from it inside the script. Declaring the tag keeps the derived key in
//     the declared key's cluster slot, which is what Redis Cluster requires of
//     a script that touches a key it computes.
//   - The key expires a little after its window, so Redis holds at most two
//     windows of counters per active account.
//
// ARGV: hits, limit, window length in seconds, TTL slack in seconds.
// Returns {allowed (0|1), count after the call, ms until the window ends, window number}.
const takeScript = `
local t = redis.call('TIME')
local sec = tonumber(t[1])
local ms = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local hits = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local len = tonumber(ARGV[3])
local window = math.floor(sec / len)
local key = KEYS[1] .. ':' .. string.format('%d', window)
local reset = (window + 1) * len * 1000 - ms
local current = tonumber(redis.call('GET', key) or 0)
if current + hits > limit then
  return {0, current, reset, window}
end
current = redis.call('INCRBY', key, hits)
if current == hits then
  redis.call('EXPIRE', key, len + tonumber(ARGV[4]))
end
return {1, current, reset, window}
`

// ttlSlack keeps a window's key a little past the window's end, so a late
// reader never sees a key vanish in the middle of its own window.
const ttlSlack = 10 * time.Second

// Result is the answer for one api_user's window.
type Result struct {
	// Allowed says whether the hits were admitted (and counted).
	Allowed bool
	// Count is the window's count after this call.
	Count int64
	// Limit is the limit the call was checked against.
	Limit int64
	// ResetIn is the time left in the window.
	ResetIn time.Duration
	// Window numbers the window: unix seconds divided by the window length.
	Window int64
}

// Remaining is what the window still admits, never negative (a limit lowered
// mid-window can leave the count above it).
func (r Result) Remaining() int64 {
	return max(r.Limit-r.Count, 0)
}

// Redis is what the counter needs of a go-redis client (a *redis.Client,
// or a *redis.ClusterClient): scripts, and pipelines for batches of them.
type Redis interface {
	redis.Scripter
	Pipeline() redis.Pipeliner
}

// Counter is the shared fixed-window counter in Redis.
type Counter struct {
	client   Redis
	script   *redis.Script
	lease    *redis.Script
	giveBack *redis.Script
	window   time.Duration
	scope    string
}

// NewCounter counts in Redis in calendar-aligned windows of the given length
// (whole seconds; a minute in production).
func NewCounter(client Redis, window time.Duration) (*Counter, error) {
	if window < time.Second || window%time.Second != 0 {
		return nil, fmt.Errorf("counter window %v: want a whole number of seconds", window)
	}
	lease, giveBack := newLeaseScripts()
	return &Counter{client: client, script: redis.NewScript(takeScript), lease: lease, giveBack: giveBack, window: window}, nil
}

// Scoped makes c count in scope: counters of different scopes never share a
// key, so two fleets (or two tenants' relays) with an api_user of the same
// name in one Redis keep separate budgets.
func (c *Counter) Scoped(scope string) *Counter {
	scoped := *c
	scoped.scope = scope
	return &scoped
}

// Key is the Redis key of an api_user's counter in a window of a scope ("",
// or the relay's namespace/name). The scope and api_user are the hash tag,
// so every window of one account lives on one cluster slot. '|' appears in
// neither a Kubernetes name nor an api_user, so keys cannot collide.
func Key(scope, apiUser string, window int64) string {
	return tag(scope, apiUser) + ":" + strconv.FormatInt(window, 10)
}

func tag(scope, apiUser string) string {
	if scope == "" {
		return "{" + apiUser + "}"
	}
	return "{" + scope + "|" + apiUser + "}"
}

// Take adds hits to apiUser's count in the current window unless that would
// exceed limit. It makes one round trip: EVALSHA, or EVAL when Redis has not
// cached the script yet (after a restart, for instance).
func (c *Counter) Take(ctx context.Context, apiUser string, hits, limit int64) (Result, error) {
	vals, err := c.script.Run(ctx, c.client, []string{tag(c.scope, apiUser)},
		hits, limit, c.seconds(), int64(ttlSlack/time.Second)).Int64Slice()
	if err != nil {
		return Result{}, fmt.Errorf("redis take: %w", err)
	}
	if len(vals) != 4 {
		return Result{}, errors.New("redis take: the script returned an unexpected reply")
	}
	return Result{
		Allowed: vals[0] == 1,
		Count:   vals[1],
		Limit:   limit,
		ResetIn: time.Duration(vals[2]) * time.Millisecond,
		Window:  vals[3],
	}, nil
}
