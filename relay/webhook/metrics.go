package webhook

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	posts   *prometheus.CounterVec
	dropped prometheus.Counter
}

// No account, URL or secret is a label: results only.
func newMetrics(reg prometheus.Registerer, disabled, lag func() float64) *metrics {
	m := &metrics{
		posts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfleet_webhook_events_posted_total",
			Help: "Events in webhook POSTs, by result: ok (2xx), gone (410, the webhook disabled), status (another answer), error (no answer), refused (a destination the relay does not post to).",
		}, []string{"result"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailfleet_webhook_events_dropped_total",
			Help: "Events dropped after their webhook failed for longer than the retry limit (24 h by default).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.posts, m.dropped,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "mailfleet_webhooks_disabled",
				Help: "Webhooks disabled because their endpoint answered 410 Gone.",
			}, disabled),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "mailfleet_webhook_lag_seconds",
				Help: "Age of the oldest event not yet acknowledged by its webhook, across the webhooks this relay serves (disabled ones left out).",
			}, lag))
	}
	return m
}

func (m *metrics) posted(result string, n int) {
	m.posts.WithLabelValues(result).Add(float64(n))
}

// lag is the age of the oldest event a served webhook has not taken:
// for each consumer, the first event after its acknowledgement floor that
// it still has to deliver or see acknowledged.
func (d *Dispatcher) lag() float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	d.mu.Lock()
	senders := make([]*sender, 0, len(d.senders))
	for _, s := range d.senders {
		senders = append(senders, s)
	}
	d.mu.Unlock()
	var oldest time.Duration
	for _, s := range senders {
		if d.disabled.has(s.hook.Load().key) {
			continue
		}
		oldest = max(oldest, s.lag(ctx))
	}
	return oldest.Seconds()
}

func (s *sender) lag(ctx context.Context) time.Duration {
	info, err := s.currentConsumer().Info(ctx)
	if err != nil || info.NumPending+uint64(info.NumAckPending) == 0 {
		return 0
	}
	var oldest time.Duration
	for _, subj := range info.Config.FilterSubjects {
		m, err := s.d.stream.GetMsg(ctx, info.AckFloor.Stream+1, jetstream.WithGetMsgSubject(subj))
		if err == nil {
			oldest = max(oldest, time.Since(m.Time))
		}
	}
	return oldest
}
