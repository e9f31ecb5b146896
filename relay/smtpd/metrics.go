package smtpd

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the engine's Prometheus series: connections, sessions, TLS
// and AUTH exchanges. What becomes of messages is the Backend's to count
// (relay/submission). Keys never appear in a series.
type Metrics struct {
	sessions    *prometheus.CounterVec
	active      *prometheus.GaugeVec
	refused     *prometheus.CounterVec
	tlsFailures *prometheus.CounterVec
	auth        *prometheus.CounterVec
}

// NewMetrics registers the engine's series with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		sessions: counterVec("mailfleet_relay_sessions_total", "SMTP sessions accepted, by listener.", "listener"),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mailfleet_relay_sessions_active",
			Help: "SMTP sessions open now, by listener.",
		}, []string{"listener"}),
		refused:     counterVec("mailfleet_relay_connections_refused_total", "Connections answered with 421 and closed, by reason (max_connections, client_connections, client_rate, draining), or closed at once on a PROXY protocol listener (proxy_untrusted: not from a trusted load balancer; proxy_header: no valid header).", "reason"),
		tlsFailures: counterVec("mailfleet_relay_tls_handshake_failures_total", "Failed TLS handshakes (implicit TLS or STARTTLS), by listener.", "listener"),
		auth:        counterVec("mailfleet_relay_auth_total", "Authentication attempts, by mechanism and result (success, failure, throttled, malformed).", "mechanism", "result"),
	}
	reg.MustRegister(m.sessions, m.active, m.refused, m.tlsFailures, m.auth)
	return m
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
}
