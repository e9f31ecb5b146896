package budget

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// leaseMetrics is what only the relay knows about its leases: whether
// leasing keeps ahead of the mail (decisions that had to wait), how long a
// lease takes to arrive as the relay sees it, and how many accounts it
// holds state for. The sidecar counts the calls, units and outcomes from
// its side (mailfleet_ratelimit_lease_*). No series is per account.
type leaseMetrics struct {
	waits    prometheus.Counter
	fetch    *prometheus.HistogramVec
	accounts prometheus.GaugeFunc
}

func newLeaseMetrics(reg prometheus.Registerer, accounts func() float64) *leaseMetrics {
	m := &leaseMetrics{
		waits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailfleet_budget_lease_waits_total",
			Help: "Budget decisions that waited for a lease to arrive instead of being decided from one at hand.",
		}),
		fetch: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mailfleet_budget_lease_call_seconds",
			Help:    "Lease calls to the rate-limit sidecar as the relay sees them, by kind (take: a message's or a refill's lease; renew: next-window leases; return: units given back) and result (ok, error).",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16),
		}, []string{"kind", "result"}),
		accounts: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mailfleet_budget_lease_accounts",
			Help: "Accounts this relay process holds lease state for.",
		}, accounts),
	}
	if reg != nil {
		reg.MustRegister(m.waits, m.fetch, m.accounts)
	}
	return m
}

// call records one lease call that took from sent to received.
func (m *leaseMetrics) call(kind string, err error, sent, received time.Time) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.fetch.WithLabelValues(kind, result).Observe(received.Sub(sent).Seconds())
}
