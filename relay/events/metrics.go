package events

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	produced *prometheus.CounterVec
	dropped  *prometheus.CounterVec
}

// Labels are the event type and a drop's reason, never an account or a
// recipient.
func newMetrics(reg prometheus.Registerer, buffered func() float64) *metrics {
	m := &metrics{
		produced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfleet_events_produced_total",
			Help: "Delivery events written to the events stream, by type.",
		}, []string{"type"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfleet_events_dropped_total",
			Help: "Delivery events never written to the events stream: buffer_full (the stream was out of reach too long), shutdown (still buffered when the relay stopped), closed.",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.produced, m.dropped, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mailfleet_events_buffered",
			Help: "Delivery events waiting in the relay's memory for the events stream.",
		}, buffered))
	}
	return m
}
