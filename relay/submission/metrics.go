package submission

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailfleet/mailfleet/relay/credentials"
)

// Metrics are what becomes of messages, per account and label because
// operators bill and debug per account; keys never appear.
type Metrics struct {
	messages   *prometheus.CounterVec
	bytes      *prometheus.CounterVec
	signatures *prometheus.CounterVec
}

// NewMetrics registers the policy's series with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		messages: counterVec("mailfleet_relay_messages_total", "Messages by account, label, outcome (accepted, rejected) and rejection reason.", "account", "label", "outcome", "reason"),
		bytes:    counterVec("mailfleet_relay_accepted_bytes_total", "Bytes of accepted messages, by account and label.", "account", "label"),
		signatures: counterVec("mailfleet_dkim_signatures_total",
			"Messages DKIM-signed at submission (result=signed), and those sent without the signature their domain has a key for (result=failed).", "result"),
	}
	reg.MustRegister(m.messages, m.bytes, m.signatures)
	return m
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
}

// Rejection reasons, the values of mailfleet_relay_messages_total{reason},
// and what a Refusal from Submit carries for the HTTP API to map.
const (
	ReasonTooBig           = "too_big"
	ReasonLineTooLong      = "line_too_long"
	ReasonOverBudget       = "over_budget"
	ReasonBudgetDown       = "budget_unavailable"
	ReasonQueueDown        = "queue_unavailable"
	ReasonSenderNotAllowed = "sender_not_allowed"
	ReasonInterrupted      = "interrupted"
	// ReasonTooManyRecipients is the HTTP API's alone: an SMTP client is
	// told 452 per recipient and sends the rest in another transaction.
	ReasonTooManyRecipients = "too_many_recipients"
	// ReasonRecipientSuppressed: an HTTP API message named a suppressed
	// recipient (SMTP refuses the RCPT alone).
	ReasonRecipientSuppressed = "recipient_suppressed"
	// ReasonSMTPAPIInvalid: an X-SMTPAPI header that cannot be applied.
	ReasonSMTPAPIInvalid = "smtpapi_invalid"
)

func (m *Metrics) accepted(id *credentials.Identity, size int64) {
	m.messages.WithLabelValues(id.APIUser, id.LabelID, "accepted", "").Inc()
	m.bytes.WithLabelValues(id.APIUser, id.LabelID).Add(float64(size))
}

// ReasonAllSuppressed: every recipient was suppressed and dropped; the
// client got its 250 and nothing was queued.
const ReasonAllSuppressed = "all_recipients_suppressed"

func (m *Metrics) dropped(id *credentials.Identity) {
	m.messages.WithLabelValues(id.APIUser, id.LabelID, "dropped", ReasonAllSuppressed).Inc()
}

func (m *Metrics) rejected(id *credentials.Identity, reason string) {
	m.messages.WithLabelValues(id.APIUser, id.LabelID, "rejected", reason).Inc()
}

func (m *Metrics) signature(ok bool) {
	if ok {
		m.signatures.WithLabelValues("signed").Inc()
	} else {
		m.signatures.WithLabelValues("failed").Inc()
	}
}
