package main

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// limiterTable indexes the fixed-rate runs (not the deny run) by limiter
// and rate, in the order they were measured.
type limiterTable struct {
	names []string
	rates []int
	runs  map[string]map[int]limiterRun
}

func newLimiterTable(runs []limiterRun) limiterTable {
	t := limiterTable{runs: map[string]map[int]limiterRun{}}
	for _, x := range runs {
		if x.deny {
			continue
		}
		if t.runs[x.name] == nil {
			t.names = append(t.names, x.name)
			t.runs[x.name] = map[int]limiterRun{}
		}
		if !slices.Contains(t.rates, x.rate) {
			t.rates = append(t.rates, x.rate)
		}
		t.runs[x.name][x.rate] = x
	}
	slices.Sort(t.rates)
	return t
}

// highest is the highest offered rate the limiter kept to, 0 for none.
func (t limiterTable) highest(name string) int {
	best := 0
	for _, rate := range t.rates {
		if x, ok := t.runs[name][rate]; ok && x.sustained() {
			best = rate
		}
	}
	return best
}

// header starts a table with one column per rate.
func (t limiterTable) header(b *strings.Builder, first string) {
	fmt.Fprintf(b, "| %s |", first)
	for _, rate := range t.rates {
		fmt.Fprintf(b, " %d/s |", rate)
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|", len(t.rates)) + "\n")
}

func (r *report) writeLimiter(b *strings.Builder) {
	t := newLimiterTable(r.limiter)
	fmt.Fprintf(b, "## Budget decisions\n\n%s\n\nThis part alone: `go run ./hack/bench/peers -only limiter -out /tmp/peers` "+
		"(`-quick` for a smoke run; `-skip envoy,noop` leaves limiters out).\n\n", limiterText)
	if len(t.names) > 0 {
		r.writeLimiterRates(b, t)
	}
	r.writeLimiterDeny(b)
}

func (r *report) writeLimiterRates(b *strings.Builder, t limiterTable) {
	fmt.Fprintf(b, "Latency p50 / p99 / max in ms, and decisions answered per second, with %d callers offering each rate for %s "+
		"(**behind**: the callers could not keep to the rate; failed: not answered in time):\n\n", r.opts.limiterCallers, r.opts.limiterFor)
	t.header(b, "limiter")
	for _, name := range t.names {
		fmt.Fprintf(b, "| %s |", name)
		for _, rate := range t.rates {
			fmt.Fprintf(b, " %s |", limiterCell(t.runs[name][rate]))
		}
		b.WriteString("\n")
	}
	envoy := t.names[0]
	if !strings.HasPrefix(envoy, "Envoy") {
		b.WriteString("\n")
		return
	}
	b.WriteString("\nThe highest offered rate each kept to, and p50 / p99 against Envoy's at each rate:\n\n| limiter | highest rate kept to |")
	for _, rate := range t.rates {
		fmt.Fprintf(b, " %d/s |", rate)
	}
	b.WriteString("\n|---|---:|" + strings.Repeat("---:|", len(t.rates)) + "\n")
	for _, name := range t.names {
		fmt.Fprintf(b, "| %s | %s |", name, rateKept(t.highest(name), t.rates))
		for _, rate := range t.rates {
			if name == envoy {
				b.WriteString(" 1 / 1 |")
				continue
			}
			x, e := t.runs[name][rate], t.runs[envoy][rate]
			fmt.Fprintf(b, " %s / %s |", ratio3(x.p50, e.p50), ratio3(x.p99, e.p99))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

func limiterCell(x limiterRun) string {
	if x.made == 0 {
		return "–"
	}
	s := fmt.Sprintf("%s / %s / %s (%.0f)", msText(x.p50), msText(x.p99), msText(x.max), x.achieved)
	if !x.sustained() {
		s += " **behind**"
	}
	if x.failed > 0 {
		s += fmt.Sprintf(" %d failed", x.failed)
	}
	return s
}

func rateKept(best int, rates []int) string {
	switch {
	case best == 0:
		return fmt.Sprintf("< %d/s", rates[0])
	case best == rates[len(rates)-1]:
		return fmt.Sprintf("≥ %d/s", best)
	}
	return fmt.Sprintf("%d/s", best)
}

func (r *report) writeLimiterDeny(b *strings.Builder) {
	var deny []limiterRun
	for _, x := range r.limiter {
		if x.deny {
			deny = append(deny, x)
		}
	}
	if len(deny) == 0 {
		return
	}
	exact := max(1, deny[0].offered/limiterDenyUsers/2) * limiterDenyUsers
	fmt.Fprintf(b, "Budgets that run out: %d/s for %s over %d accounts of their own, each with half the budget its calls ask for, "+
		"so that about half the answers are no (the no-op server, which says yes to all, is left out). Counted exactly, at most %d "+
		"are yes; more can only come from the sidecar's fallback limiter, which decides while Redis misses its deadline "+
		"(failure mode allow, the default): **fallback** is how many decisions or lease asks it made during the run, "+
		"from the sidecar's mailfleet_ratelimit_fallback_total (– for Envoy's service, which has no fallback: a Redis error is an error):\n\n"+
		"| limiter | p50 / p99 / max ms | answered/s | yes | no | failed | fallback |\n|---|---:|---:|---:|---:|---:|---:|\n",
		deny[0].rate, r.opts.limiterFor, limiterDenyUsers, exact)
	for _, x := range deny {
		behind := ""
		if !x.sustained() {
			behind = " **behind**"
		}
		fallback := "–"
		if x.fallback >= 0 {
			fallback = fmt.Sprintf("%.0f", x.fallback)
		}
		fmt.Fprintf(b, "| %s | %s / %s / %s | %.0f%s | %d | %d | %d | %s |\n", x.name, msText(x.p50), msText(x.p99), msText(x.max),
			x.achieved, behind, x.allowed, x.denied, x.failed, fallback)
	}
	b.WriteString("\n")
}

// msText prints a latency in ms to three significant digits, at least
// to the microsecond.
func msText(d time.Duration) string {
	return sig3(max(ms(d), 0.001))
}

func ratio3(a, b time.Duration) string {
	if b == 0 {
		return "–"
	}
	return sig3(float64(a)/float64(b)) + "×"
}

// sig3 prints v to three significant digits without an exponent: these
// tables set a lease's microsecond beside a saturated limiter's seconds.
func sig3(v float64) string {
	if v <= 0 {
		return "0"
	}
	decimals := max(0, 2-int(math.Floor(math.Log10(v))))
	return strconv.FormatFloat(v, 'f', decimals, 64)
}

const limiterText = `Every limiter counts in one redis-server (no persistence) and is loaded in turn by the
same generator in this harness's process: a fixed number of callers, as many sessions of a
relay each waiting for its answer, that together offer a fixed rate. Each call is due at its
place in the schedule; a caller whose answers come late makes its next calls at once, back to
back, and stops when the run's time (and a tenth more) is up, so a limiter that cannot keep
up is shown **behind** rather than given a longer run. Latency is timed from each call's
start; one second of warm-up at each rate is not counted. The accounts: one hot api_user with
a fifth of the calls, the rest a Zipf spread over 10,000 api_users (a few busy, most quiet),
each with a budget no run reaches, so every answer is a yes and each limiter does the same
work per call.

- **Envoy ratelimit (RLS)**: Envoy's rate limit service (` + "`service_cmd`" + `, built from the Go module
  proxy by hack/install-bench-deps.sh) with a per-minute limit for each api_user of the relay's
  domain, asked over gRPC with the request the relay's sidecar client sends (the account's
  budget as the descriptor's limit override); one Redis round trip per decision (INCRBY and
  EXPIRE pipelined), stats counted in memory and not exported.
- **mailfleet sidecar (RLS)**: ` + "`mailfleet ratelimit`" + ` asked the same way (one Lua script per decision).
- **mailfleet relay, per message**: the relay's sidecar client (` + "`budget.Sidecar`" + `,
  ` + "`budget.sidecar.leases: false`" + `), one call per message, to the same sidecar.
- **mailfleet relay, leases**: the relay's default (` + "`budget.Leased`" + `): messages decided in the
  process from leases it takes from the same sidecar. An account's first message in a window
  it has not sent in (and did not send in the window before) waits for one round trip; a run
  meets thousands of this spread's quiet accounts for the first time, which is what its p90
  and p99 show. **every account warm** is the same run after one untimed decision for each
  account it will ask about: the steady state of accounts that send at least once a minute.
- **no-op gRPC server (RLS)**: a process of its own (this harness started again) that answers
  yes at once, without Redis: the floor of one loopback round trip.`
