package httpapi

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics count the API's requests by route and status. Accounts are not a
// label here (mailfleet_relay_messages_total counts messages per account,
// whichever door they came through), and neither is anything a client
// chose: an unknown path is "other".
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	refusals *prometheus.CounterVec
}

// NewMetrics registers the API's series with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfleet_api_requests_total",
			Help: "HTTP API requests, by route (/v1/mail/send, /v1/openapi.json, other) and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mailfleet_api_request_duration_seconds",
			Help:    "Time to answer an HTTP API request, by route; a send includes the queue's durable acknowledgement.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfleet_api_connections_refused_total",
			Help: "HTTP API connections closed before a request, by reason: proxy_untrusted (a PROXY protocol listener's peer outside its trusted ranges).",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.requests, m.duration, m.refusals)
	return m
}

func (m *Metrics) refused(reason string) { m.refusals.WithLabelValues(reason).Inc() }

func (m *Metrics) observe(route string, status int, took time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(route).Observe(took.Seconds())
}
