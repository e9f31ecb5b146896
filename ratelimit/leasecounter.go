package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// leaseScript grants a lease: a block of an account's budget in one window,
// counted as used in the same key takeScript counts in, so leases and
// ShouldRateLimit calls share one budget exactly.
//
//   - The grant is min(want, what is left), and nothing at all when less
//     than need is left: a relay deciding a message with need recipients
//     takes them all or none, as takeScript does.
//   - Beyond need, a grant takes at most a quarter of what is left
//     (ARGV[7]). Far from the budget's edge that changes nothing; near it,
//     blocks shrink towards the units each message needs, so the budget is
//     not stranded in leases other relays hold when it runs out.
//   - What each holder took is kept in a hash beside the counter (field:
//     holder), so returnScript can never give back more than the holder
//     took: the count never drops below what the others took.
//   - next (ARGV[6]) takes from the window after the current one; times are
//     in microseconds, from Redis TIME, relative to now.
//
// ARGV: want, need, limit, window length (s), TTL slack (s), next (0|1),
// share divisor, holder.
// Returns {granted, left after the grant (or left, when nothing was
// granted), µs until the window starts (≤ 0: it has), µs until it ends,
// window number}.
const leaseScript = `
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000000 + tonumber(t[2])
local want = tonumber(ARGV[1])
local need = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local len = tonumber(ARGV[4])
local window = math.floor(sec / len) + tonumber(ARGV[6])
local key = KEYS[1] .. ':' .. string.format('%d', window)
local starts = window * len * 1000000 - now
local ends = starts + len * 1000000
local left = limit - tonumber(redis.call('GET', key) or 0)
local grant = 0
if left > 0 and left >= need then
  grant = need + math.max(0, math.min(want - need, math.floor((left - need) / tonumber(ARGV[7]))))
end
if grant == 0 then
  return {0, math.max(left, 0), starts, ends, window}
end
local leases = key .. ':leases'
redis.call('INCRBY', key, grant)
redis.call('HINCRBY', leases, ARGV[8], grant)
local ttl = math.floor(ends / 1000) + tonumber(ARGV[5]) * 1000
if redis.call('PTTL', key) < 0 then
  redis.call('PEXPIRE', key, ttl)
end
if redis.call('PTTL', leases) < 0 then
  redis.call('PEXPIRE', leases, ttl)
end
return {grant, left - grant, starts, ends, window}
`

// returnScript gives back units a holder leased and did not use: at most
// what the holder still holds of that window, and nothing for a window that
// has passed (its count no longer admits anything, and a late return must
// not look like room in a window that reuses nothing of it).
//
// ARGV: window, units, holder, window length (s). Returns the units given back.
const returnScript = `
local t = redis.call('TIME')
local window = tonumber(ARGV[1])
if window < math.floor(tonumber(t[1]) / tonumber(ARGV[4])) then
  return 0
end
local key = KEYS[1] .. ':' .. string.format('%d', window)
local leases = key .. ':leases'
local n = math.min(tonumber(ARGV[2]), tonumber(redis.call('HGET', leases, ARGV[3]) or 0),
  tonumber(redis.call('GET', key) or 0))
if n <= 0 then
  return 0
end
redis.call('HINCRBY', leases, ARGV[3], -n)
redis.call('DECRBY', key, n)
return n
`

// leaseShareDivisor: beyond what the message being decided needs, a lease
// takes at most 1/leaseShareDivisor of what is left in the window.
const leaseShareDivisor = 4

// LeaseAsk is one lease request.
type LeaseAsk struct {
	APIUser string
	// Want is the block asked for, Need the least that is of use (0: any).
	Want, Need int64
	// Limit is the account's budget per window.
	Limit int64
	// Next takes from the window after the current one.
	Next bool
}

// Lease is what Redis granted.
type Lease struct {
	// Units granted; 0 when fewer than Need were left.
	Units int64
	// Left is what the window has left after the grant.
	Left int64
	// Window numbers the window; StartsIn (negative once it has begun)
	// and EndsIn place it relative to when Redis decided.
	Window           int64
	StartsIn, EndsIn time.Duration
}

// Leases takes blocks of accounts' budgets for holder (see leaseScript),
// one script per ask in one pipeline: one round trip for the batch.
func (c *Counter) Leases(ctx context.Context, holder string, asks []LeaseAsk) ([]Lease, error) {
	out := make([]Lease, len(asks))
	err := c.runBatch(ctx, c.lease, len(asks), func(i int) ([]string, []any) {
		a := asks[i]
		next := 0
		if a.Next {
			next = 1
		}
		return []string{tag(c.scope, a.APIUser)}, []any{max(a.Want, a.Need), a.Need, a.Limit, c.seconds(),
			int64(ttlSlack / time.Second), next, leaseShareDivisor, holder}
	}, func(i int, cmd *redis.Cmd) error {
		vals, err := cmd.Int64Slice()
		if err != nil {
			return err
		}
		if len(vals) != 5 {
			return errors.New("the script returned an unexpected reply")
		}
		out[i] = Lease{
			Units: vals[0], Left: vals[1], Window: vals[4],
			StartsIn: time.Duration(vals[2]) * time.Microsecond,
			EndsIn:   time.Duration(vals[3]) * time.Microsecond,
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redis lease: %w", err)
	}
	return out, nil
}

// Unused is what a holder gives back of one account's window.
type Unused struct {
	APIUser       string
	Window, Units int64
}

// Returns gives back what holder did not use (see returnScript), in one
// pipeline, and reports how many units each gave back.
func (c *Counter) Returns(ctx context.Context, holder string, unused []Unused) ([]int64, error) {
	out := make([]int64, len(unused))
	err := c.runBatch(ctx, c.giveBack, len(unused), func(i int) ([]string, []any) {
		u := unused[i]
		return []string{tag(c.scope, u.APIUser)}, []any{u.Window, u.Units, holder, c.seconds()}
	}, func(i int, cmd *redis.Cmd) (err error) {
		out[i], err = cmd.Int64()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redis return: %w", err)
	}
	return out, nil
}

// runBatch runs script n times in one pipeline, with the keys and
// arguments args gives for each, and hands each reply to read. Scripts go
// as EVALSHA; those Redis has not cached (after a restart or SCRIPT FLUSH)
// go again as EVAL, which caches it. A script that failed did nothing, so
// sending it again cannot count twice.
func (c *Counter) runBatch(ctx context.Context, script *redis.Script, n int,
	args func(int) ([]string, []any), read func(int, *redis.Cmd) error) error {
	cmds := make([]*redis.Cmd, n)
	run := func(todo []int, eval bool) error {
		pipe := c.client.Pipeline()
		for _, i := range todo {
			keys, argv := args(i)
			if eval {
				cmds[i] = script.Eval(ctx, pipe, keys, argv...)
			} else {
				cmds[i] = script.EvalSha(ctx, pipe, keys, argv...)
			}
		}
		_, err := pipe.Exec(ctx)
		if err != nil && !redis.HasErrorPrefix(err, "NOSCRIPT") {
			return err
		}
		return nil
	}
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	if err := run(all, false); err != nil {
		return err
	}
	var uncached []int
	for i, cmd := range cmds {
		if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			uncached = append(uncached, i)
		}
	}
	if len(uncached) > 0 {
		if err := run(uncached, true); err != nil {
			return err
		}
	}
	for i, cmd := range cmds {
		if err := read(i, cmd); err != nil {
			return err
		}
	}
	return nil
}

// seconds is the window's length in seconds, as the scripts take it.
func (c *Counter) seconds() int64 { return int64(c.window / time.Second) }

// newLeaseScripts are the counter's lease scripts, loaded with it.
func newLeaseScripts() (lease, giveBack *redis.Script) {
	return redis.NewScript(leaseScript), redis.NewScript(returnScript)
}
