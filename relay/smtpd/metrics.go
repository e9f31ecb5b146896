package smtpd

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the relay's Prometheus series. Accounts and labels appear as
// label values because operators bill and debug per account; keys never do.
type Metrics struct {
	sessions    *prometheus.CounterVec
	active      *prometheus.GaugeVec
	refused     *prometheus.CounterVec
	tlsFailures *prometheus.CounterVec
	auth        *prometheus.CounterVec
	messages    *prometheus.CounterVec
	bytes       *prometheus.CounterVec
}

// NewMetrics registers the relay's series with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfleet_relay_sessions_total",
			Help: "SMTP sessions accepted, by listener.",
		}, []string{"listener"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mailfleet_relay_sessions_active",
			Help: "SMTP sessions open now, by listener.",
		}, []string{"listener"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfleet_relay_connections_refused_total",
			Help: "Connections answered with 421 and closed, by reason (max_connections, client_connections, client_rate, draining), or closed at once on a PROXY protocol listener (proxy_untrusted: not from a trusted load balancer; proxy_header: no valid header).",
		}, []string{"reason"}),
		tlsFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfleet_relay_tls_handshake_failures_total",
			Help: "Failed TLS handshakes (implicit TLS or STARTTLS), by listener.",
		}, []string{"listener"}),
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfleet_relay_auth_total",
			Help: "Authentication attempts, by mechanism and result (success, failure, throttled, malformed).",
		}, []string{"mechanism", "result"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfleet_relay_messages_total",
			Help: "Messages by account, label, outcome (accepted, rejected) and rejection reason.",
		}, []string{"account", "label", "outcome", "reason"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfleet_relay_accepted_bytes_total",
			Help: "Bytes of accepted messages, by account and label.",
		}, []string{"account", "label"}),
	}
	reg.MustRegister(m.sessions, m.active, m.refused, m.tlsFailures, m.auth, m.messages, m.bytes)
	return m
}

// Rejection reasons, the values of mailfleet_relay_messages_total{reason}.
const (
	reasonTooBig           = "too_big"
	reasonLineTooLong      = "line_too_long"
	reasonOverBudget       = "over_budget"
	reasonBudgetDown       = "budget_unavailable"
	reasonQueueDown        = "queue_unavailable"
	reasonSenderNotAllowed = "sender_not_allowed"
	reasonInterrupted      = "interrupted"
)

func (m *Metrics) accepted(account, label string, size int64) {
	m.messages.WithLabelValues(account, label, "accepted", "").Inc()
	m.bytes.WithLabelValues(account, label).Add(float64(size))
}

func (m *Metrics) rejected(account, label, reason string) {
	m.messages.WithLabelValues(account, label, "rejected", reason).Inc()
}
