package main

import (
	"context"
	"fmt"
	"log"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"
)

// The limiter measurement: budget decisions at fixed offered rates, each
// limiter loaded in turn by the same generator, all counting in one
// redis-server. The accounts are those of a relay's day: one hot api_user
// with a fifth of the calls, the rest a Zipf spread over limiterUsers
// api_users (a few busy, most quiet), each with a budget no run reaches, so
// every answer is a yes and every limiter does the same work per call. One
// more run, at -limiter-deny, gives limiterDenyUsers accounts half the
// budget they ask for, so that about half the answers are no.
const (
	limiterUsers     = 10_000
	limiterBudget    = 1_000_000_000
	limiterDenyUsers = 100
)

// outcome is one decision's answer as the caller sees it.
type outcome int

const (
	allowed outcome = iota
	denied          // over the account's budget
	failed          // no answer in time, or an error
)

// decide is one budget decision: one message of user against its budget
// per minute.
type decide func(ctx context.Context, user string, budget uint32) outcome

// limiter is one thing measured; id names it to -skip.
type limiter struct {
	id, name string
	decide   decide
	// fallbacks, for the limiters behind mailfleet's sidecar, reads its
	// count of decisions its fallback made because Redis did not answer
	// in time (failure mode allow).
	fallbacks func() float64
}

// limiterRun is one limiter at one offered rate.
type limiterRun struct {
	name               string
	rate               int
	deny               bool    // the run whose budgets run out
	achieved           float64 // answered per second
	p50, p90, p99, max time.Duration
	made               int // calls made; fewer than offered when the callers fell behind
	offered            int
	allowed, denied    int
	failed             int
	// fallback is how many of the run's decisions (or lease asks) the
	// sidecar's fallback limiter made; -1 when not known.
	fallback float64
}

// sustained says whether the callers kept to the offered rate: every call
// made within the run's time (and a tenth more), nearly all answered.
func (r limiterRun) sustained() bool {
	return r.made == r.offered && r.failed*100 <= r.offered
}

// measureLimiter starts Redis, mailfleet's sidecar, Envoy's ratelimit and a
// gRPC server that answers at once, then loads each limiter at each rate,
// and last at -limiter-deny with budgets that run out.
func measureLimiter(ctx context.Context, l *lab, o options, rep *report) error {
	rates, err := parseRates(o.limiterRates)
	if err != nil {
		return err
	}
	limiters, closeAll, err := startLimiters(ctx, l, o.skipPeers)
	if err != nil {
		return err
	}
	defer closeAll()
	load := limiterLoad{callers: o.limiterCallers}
	for i, rate := range rates {
		for j := range limiters {
			lim := limiters[(i+j)%len(limiters)] // no limiter always first
			load.offer(ctx, lim.decide, rate, time.Second, zipfAccounts)
			run := load.offer(ctx, lim.decide, rate, o.limiterFor, zipfAccounts)
			run.name = lim.name
			rep.limiter = append(rep.limiter, run)
			logLimiterRun(run)
			if lim.id == "relay-leased" {
				warm := load.offerWarm(ctx, lim.decide, rate, o.limiterFor)
				warm.name = lim.name + ", every account warm"
				rep.limiter = append(rep.limiter, warm)
				logLimiterRun(warm)
			}
		}
	}
	if o.limiterDeny <= 0 {
		return nil
	}
	for i, lim := range limiters {
		if lim.id == "noop" {
			continue // it says yes to everything
		}
		waitForWindow(ctx, o.limiterFor+2*time.Second)
		before := fallbacks(lim)
		run := load.offer(ctx, lim.decide, o.limiterDeny, o.limiterFor, denyAccounts(i))
		run.name, run.deny, run.fallback = lim.name, true, -1
		if after := fallbacks(lim); before >= 0 && after >= 0 {
			run.fallback = after - before
		}
		rep.limiter = append(rep.limiter, run)
		logLimiterRun(run)
	}
	return nil
}

func fallbacks(lim limiter) float64 {
	if lim.fallbacks == nil {
		return -1
	}
	return lim.fallbacks()
}

func logLimiterRun(r limiterRun) {
	log.Printf("limiter %-30s %6d/s offered (deny run: %-5v): %8.0f/s answered, p50 %7.3f ms, p99 %7.3f ms, max %7.1f ms; "+
		"%d made of %d, %d yes, %d no, %d failed", r.name, r.rate, r.deny, r.achieved, ms(r.p50), ms(r.p99), ms(r.max),
		r.made, r.offered, r.allowed, r.denied, r.failed)
}

func parseRates(s string) ([]int, error) {
	sizes, err := parseSizes(s)
	if err != nil {
		return nil, fmt.Errorf("limiter rates %q: want decisions per second, comma-separated", s)
	}
	return sizes, nil
}

// limiterLoad is the generator: callers goroutines, as many sessions of a
// relay asking at once, that together offer a fixed rate.
type limiterLoad struct {
	callers int
}

// accountsFn gives the api_user and budget of the calls of one run.
type accountsFn func(n int) (users []string, budget uint32)

// offer makes rate calls a second for d. Call i is due at i/rate from the
// start and made by caller i%callers when it is due, or at once when that
// caller is late (an open schedule: a slow answer delays only its caller's
// next calls, which then go back to back); a call not made within d and a
// tenth more is not made. Each call is timed from its start.
func (g limiterLoad) offer(ctx context.Context, dec decide, rate int, d time.Duration, accounts accountsFn) limiterRun {
	n := int(float64(rate) * d.Seconds())
	users, budget := accounts(n)
	callers := max(1, min(g.callers, n))
	interval := time.Second / time.Duration(rate)
	results := make([]callerResult, callers)
	start := time.Now()
	stop := start.Add(d + d/10)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			res := &results[c]
			for i := c; i < n && ctx.Err() == nil; i += callers {
				due := start.Add(time.Duration(i) * interval)
				if wait := time.Until(due); wait > 0 {
					time.Sleep(wait)
				} else if time.Now().After(stop) {
					return
				}
				res.call(ctx, dec, users[i], budget)
			}
		})
	}
	wg.Wait()
	return merge(results, rate, n, time.Since(start))
}

// offerWarm is offer after one untimed decision for every account the run
// will ask about, so that each holds a lease when the run starts: the
// relay's steady state, in which an account that sent in this window (or
// the last) decides from its lease. Without it, the accounts a run meets
// for the first time wait for a round trip; offer measures that.
func (g limiterLoad) offerWarm(ctx context.Context, dec decide, rate int, d time.Duration) limiterRun {
	users, budget := zipfAccounts(int(float64(rate) * d.Seconds()))
	seen := map[string]bool{}
	var distinct []string
	for _, u := range users {
		if !seen[u] {
			seen[u] = true
			distinct = append(distinct, u)
		}
	}
	var wg sync.WaitGroup
	for c := range g.callers {
		wg.Go(func() {
			for i := c; i < len(distinct) && ctx.Err() == nil; i += g.callers {
				dec(ctx, distinct[i], budget)
			}
		})
	}
	wg.Wait()
	return g.offer(ctx, dec, rate, d, zipfAccounts)
}

// callerResult is what one caller saw.
type callerResult struct {
	latency  []time.Duration
	outcomes [3]int
}

func (r *callerResult) call(ctx context.Context, dec decide, user string, budget uint32) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	t := time.Now()
	out := dec(cctx, user, budget)
	r.latency = append(r.latency, time.Since(t))
	r.outcomes[out]++
}

func merge(results []callerResult, rate, offered int, elapsed time.Duration) limiterRun {
	run := limiterRun{rate: rate, offered: offered}
	var lat []time.Duration
	for _, r := range results {
		lat = append(lat, r.latency...)
		run.allowed += r.outcomes[allowed]
		run.denied += r.outcomes[denied]
		run.failed += r.outcomes[failed]
	}
	run.made = len(lat)
	if run.made == 0 {
		return run
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	run.p50, run.p90, run.p99, run.max = q(0.5), q(0.9), q(0.99), lat[len(lat)-1]
	run.achieved = float64(run.allowed+run.denied) / elapsed.Seconds()
	return run
}

// zipfAccounts: "hot" a fifth of the time, else a Zipf draw over
// limiterUsers names, the same sequence for every limiter.
func zipfAccounts(n int) ([]string, uint32) {
	r := rand.New(rand.NewPCG(1, 2))
	z := rand.NewZipf(r, 1.1, 1, limiterUsers-1)
	users := make([]string, n)
	for i := range users {
		if r.IntN(5) == 0 {
			users[i] = "hot"
			continue
		}
		users[i] = "user-" + strconv.FormatUint(z.Uint64(), 10)
	}
	return users, limiterBudget
}

// denyAccounts spreads the calls evenly over limiterDenyUsers accounts of
// their own (run names the limiter, so no run counts against another's)
// with half the budget the calls ask for.
func denyAccounts(run int) accountsFn {
	return func(n int) ([]string, uint32) {
		users := make([]string, n)
		for i := range users {
			users[i] = fmt.Sprintf("deny%d-user-%d", run, i%limiterDenyUsers)
		}
		return users, uint32(max(1, n/limiterDenyUsers/2))
	}
}

// waitForWindow waits, when less than need is left of the current minute,
// for the next one: every limiter counts in calendar minutes, and a run
// whose budgets run out must not see them renewed halfway.
func waitForWindow(ctx context.Context, need time.Duration) {
	now := time.Now()
	next := now.Truncate(time.Minute).Add(time.Minute)
	if next.Sub(now) >= need {
		return
	}
	select {
	case <-ctx.Done():
	case <-time.After(time.Until(next)):
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
