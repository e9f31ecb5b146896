package delivery

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the transports' connection figures. Delivery outcomes are
// counted by the dispatcher, which sees every transport's results. A nil
// *Metrics records nothing.
type Metrics struct {
	opened      *prometheus.CounterVec
	open        *prometheus.GaugeVec
	reused      *prometheus.CounterVec
	shapedTotal *prometheus.CounterVec
}

// NewMetrics registers the transport metrics with reg:
// mailfleet_transport_connections_opened_total{transport},
// mailfleet_transport_connections{transport} (open now, busy or idle) and
// mailfleet_transport_connections_reused_total{transport}.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfleet_transport_connections_opened_total",
			Help: "SMTP connections opened to next hops, by transport (smarthost, mx).",
		}, []string{"transport"}),
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mailfleet_transport_connections",
			Help: "SMTP connections to next hops open now, busy or idle in a pool, by transport.",
		}, []string{"transport"}),
		reused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfleet_transport_connections_reused_total",
			Help: "Messages offered on a connection that had carried an earlier one (after RSET), by transport (smarthost, mx); against the connections opened it shows the reuse.",
		}, []string{"transport"}),
		shapedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfleet_delivery_shaped_total",
			Help: "Deliveries deferred by a destination group's fleet-wide limits (sessions, messages per minute, a pause after 421), by group.",
		}, []string{"group"}),
	}
	reg.MustRegister(m.opened, m.open, m.reused, m.shapedTotal)
	return m
}

func (m *Metrics) connOpened(transport string) {
	if m == nil {
		return
	}
	m.opened.WithLabelValues(transport).Inc()
	m.open.WithLabelValues(transport).Inc()
}

func (m *Metrics) connClosed(transport string) {
	if m == nil {
		return
	}
	m.open.WithLabelValues(transport).Dec()
}

// offered counts a message offered on a connection, reused or new.
func (m *Metrics) offered(transport string, reused bool) {
	if m == nil || !reused {
		return
	}
	m.reused.WithLabelValues(transport).Inc()
}

func (m *Metrics) shaped(group string) {
	if m == nil {
		return
	}
	m.shapedTotal.WithLabelValues(group).Inc()
}
