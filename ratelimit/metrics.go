package ratelimit

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a decision, the values of the decisions metric's label.
const (
	// OutcomeOK: Redis admitted every descriptor.
	OutcomeOK = "ok"
	// OutcomeOverLimit: Redis found an account over its budget.
	OutcomeOverLimit = "over_limit"
	// OutcomeFailureAllowed: Redis failed; the pod's fallback admitted.
	OutcomeFailureAllowed = "failure_allowed"
	// OutcomeFailureOverLimit: Redis failed; the pod's fallback refused.
	OutcomeFailureOverLimit = "failure_over_limit"
	// OutcomeFailureDenied: Redis failed and the failure mode is deny.
	OutcomeFailureDenied = "failure_denied"
	// OutcomeInvalid: the request was malformed.
	OutcomeInvalid = "invalid"
	// OutcomeCanceled: the caller gave up before an answer.
	OutcomeCanceled = "canceled"
	// OutcomeNotReturned: a lease return Redis could not take; the units
	// stay counted until their window ends.
	OutcomeNotReturned = "not_returned"
)

// Lease calls and units, the values of the lease metrics' labels.
const (
	leaseTake     = "take"
	leaseReturn   = "return"
	leaseGranted  = "granted"
	leaseReturned = "returned"
)

// Metrics are the sidecar's Prometheus metrics. No label carries an
// api_user: with tens of thousands of accounts that would be a cardinality
// problem, and per-account counts are the relay's business.
type Metrics struct {
	decisions   *prometheus.CounterVec
	latency     prometheus.Histogram
	redisErrors *prometheus.CounterVec
	fallback    prometheus.Counter
	skipped     prometheus.Counter
	leaseCalls  *prometheus.CounterVec
	leaseUnits  *prometheus.CounterVec
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		decisions: counterVec("mailfleet_ratelimit_decisions_total", "ShouldRateLimit calls answered, by outcome.", "outcome"),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mailfleet_ratelimit_decision_duration_seconds",
			Help: "Time to answer a ShouldRateLimit call, inside the sidecar.",
			// From a fast loopback round trip to well past the default 50 ms deadline.
			Buckets: []float64{.0001, .00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, 1},
		}),
		redisErrors: counterVec("mailfleet_ratelimit_redis_errors_total", "Redis calls that failed, by reason (timeout: the decision deadline passed; error: anything else).", "reason"),
		fallback:    counter("mailfleet_ratelimit_fallback_total", "Descriptors and lease asks decided by the pod's fallback limiter because Redis could not answer."),
		skipped:     counter("mailfleet_ratelimit_redis_skipped_total", "Descriptors, lease asks and returns that did not try Redis because it had just failed repeatedly."),
		leaseCalls:  counterVec("mailfleet_ratelimit_lease_calls_total", "Lease calls from relays (take, return) answered, by outcome.", "call", "outcome"),
		leaseUnits:  counterVec("mailfleet_ratelimit_lease_units_total", "Budget units leased to relays (granted) and given back unused (returned).", "direction"),
	}
	for _, o := range []string{OutcomeOK, OutcomeOverLimit, OutcomeFailureAllowed, OutcomeFailureOverLimit,
		OutcomeFailureDenied, OutcomeInvalid, OutcomeCanceled} {
		m.decisions.WithLabelValues(o)
	}
	for _, o := range []string{OutcomeOK, OutcomeFailureAllowed, OutcomeFailureDenied, OutcomeInvalid, OutcomeCanceled} {
		m.leaseCalls.WithLabelValues(leaseTake, o)
	}
	for _, o := range []string{OutcomeOK, OutcomeNotReturned, OutcomeInvalid, OutcomeCanceled} {
		m.leaseCalls.WithLabelValues(leaseReturn, o)
	}
	m.leaseUnits.WithLabelValues(leaseGranted)
	m.leaseUnits.WithLabelValues(leaseReturned)
	m.redisErrors.WithLabelValues("timeout")
	m.redisErrors.WithLabelValues("error")
	reg.MustRegister(m.decisions, m.latency, m.redisErrors, m.fallback, m.skipped, m.leaseCalls, m.leaseUnits)
	return m
}

// counterVec and counter spare NewMetrics the Opts literals.
func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
}

func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

func (m *Metrics) decided(outcome string, took time.Duration) {
	m.decisions.WithLabelValues(outcome).Inc()
	m.latency.Observe(took.Seconds())
}

func (m *Metrics) leaseCall(call, outcome string) {
	m.leaseCalls.WithLabelValues(call, outcome).Inc()
}

func (m *Metrics) redisFailed(err error) {
	reason := "error"
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		reason = "timeout"
	}
	m.redisErrors.WithLabelValues(reason).Inc()
}
