package dispatch

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	deliveries *prometheus.CounterVec
	retries    *prometheus.CounterVec
	bounces    *prometheus.CounterVec
	seconds    *prometheus.HistogramVec
}

// The destination label is the configured transport's name (a smarthost's
// name, "mx" or "local"), never a recipient: recipients would make a series
// per address.
func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		deliveries: counterVec("mailfleet_deliveries_total", "Recipients by the outcome of a delivery attempt: delivered, deferred (will be retried), failed (bounced), expired (deferred past the queue lifetime, bounced), suppressed (on the account's suppression list, not sent).", "outcome", "destination"),
		retries:    counterVec("mailfleet_delivery_retries_total", "Messages scheduled for another delivery attempt.", "destination"),
		bounces:    counterVec("mailfleet_delivery_bounces_total", "Delivery status notifications queued to senders.", "destination"),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mailfleet_delivery_seconds",
			Help:    "Time the transport took for one message to one recipient domain.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 18),
		}, []string{"destination"}),
	}
	if reg != nil {
		reg.MustRegister(m.deliveries, m.retries, m.bounces, m.seconds)
	}
	return m
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
}

func (m *metrics) count(destination, outcome string, n int) {
	if n > 0 {
		m.deliveries.WithLabelValues(outcome, destination).Add(float64(n))
	}
}
