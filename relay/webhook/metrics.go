package webhook

import (
	"context"
	"math"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	posts   *prometheus.CounterVec
	dropped prometheus.Counter
}

// No account, URL or secret is a label: results only.
func newMetrics(reg prometheus.Registerer, disabled func() float64, lag func(failing bool) float64, failing func() float64) *metrics {
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
			lagGauge("ok", "whose last POST succeeded (or that have not posted yet): the relay is behind", func() float64 { return lag(false) }),
			lagGauge("failing", "whose last POST failed: their endpoints are down or refusing", func() float64 { return lag(true) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "mailfleet_webhooks_failing",
				Help: "Webhooks served by this relay whose last POST failed (disabled ones left out).",
			}, failing))
	}
	return m
}

// lagGauge is mailfleet_webhook_lag_seconds for the webhooks whose
// endpoints are in one state: a tenant's endpoint down for an hour is not
// a relay that cannot keep up, and the alert is about the second.
func lagGauge(endpoint, which string, f func() float64) prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "mailfleet_webhook_lag_seconds",
		Help:        "Age of the oldest event not yet acknowledged by its webhook, among the webhooks this relay serves (disabled ones left out), by endpoint: ok or failing.",
		ConstLabels: prometheus.Labels{"endpoint": endpoint},
	}, f)
}

func (m *metrics) posted(result string, n int) {
	m.posts.WithLabelValues(result).Add(float64(n))
}

// lag is the last measured age of the oldest event a served webhook whose
// endpoint is (or is not) failing has not taken.
func (d *Dispatcher) lag(failing bool) float64 {
	if failing {
		return math.Float64frombits(d.lagFailing.Load())
	}
	return math.Float64frombits(d.lagOK.Load())
}

// measureLag measures the lag every LagEvery until ctx ends. It asks
// JetStream twice per webhook, so it is not done in a scrape: at
// thousands of webhooks that took longer than a scrape may, and every
// relay pod's every scrape paid it.
func (d *Dispatcher) measureLag(ctx context.Context) {
	for {
		mctx, cancel := context.WithTimeout(ctx, d.cfg.LagEvery)
		var ok, failing time.Duration
		for _, s := range d.served() {
			if s.failing.Load() {
				failing = max(failing, s.lag(mctx))
			} else {
				ok = max(ok, s.lag(mctx))
			}
		}
		cancel()
		d.lagOK.Store(math.Float64bits(ok.Seconds()))
		d.lagFailing.Store(math.Float64bits(failing.Seconds()))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d.cfg.LagEvery):
		}
	}
}

// failingCount is how many served webhooks' last POST failed.
func (d *Dispatcher) failingCount() float64 {
	n := 0
	for _, s := range d.served() {
		if s.failing.Load() {
			n++
		}
	}
	return float64(n)
}

// served are the senders of the webhooks that are not disabled.
func (d *Dispatcher) served() []*sender {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*sender, 0, len(d.senders))
	for _, s := range d.senders {
		if !d.disabled.has(s.hook.Load().key) {
			out = append(out, s)
		}
	}
	return out
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
