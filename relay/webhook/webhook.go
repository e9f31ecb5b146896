// Package webhook posts the delivery events of relay/events to the
// accounts' webhook endpoints, as signed JSON batches.
//
// # One consumer per webhook
//
// Each webhook (an account's URL) has a durable JetStream consumer of its
// own on the events stream, filtered to the account's subjects of the
// types it asked for, and each relay pod runs one sender per webhook,
// pulling from it. So a slow or dead endpoint holds back only its own
// events: its consumer's unacknowledged events and its sender's backoff
// are its own, while every other webhook's consumer moves on. The pods of
// a fleet share each consumer's work. A consumer nobody pulls from for 7
// days (its webhook removed, or disabled) is removed by the server.
package webhook

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/events"
)

// Defaults.
const (
	DefaultBatchSize = 100
	DefaultBatchWait = time.Second
	DefaultTimeout   = 10 * time.Second
	DefaultRetryMin  = 5 * time.Second
	DefaultRetryMax  = time.Hour
	// DefaultGiveUp is how long an event is retried before it is dropped.
	DefaultGiveUp = 24 * time.Hour
	// syncEvery is how often the webhooks of the credentials are reread.
	syncEvery = 5 * time.Second
	// changeCheckEvery is how often a source that counts its changes is
	// asked whether it changed.
	changeCheckEvery = 250 * time.Millisecond
	// inactive removes the consumer of a webhook nobody serves any more:
	// as long as the stream keeps events, so that a webhook disabled (and
	// so not pulled from) still has its events when it is enabled again.
	inactive = events.DefaultMaxAge
)

// Accounts lists the accounts of the credentials snapshot
// (credentials.File, kubesource.Secrets).
type Accounts interface {
	All() iter.Seq[*wire.Account]
}

// Config tunes the Dispatcher; zero values take the defaults.
type Config struct {
	// QueueStream is the queue's stream; events are in EventsStream of it.
	QueueStream string
	Replicas    int
	// BatchSize and BatchWait: a POST carries up to BatchSize events, sent
	// once that many are waiting or BatchWait after the first.
	BatchSize int
	BatchWait time.Duration
	// Timeout bounds one POST.
	Timeout time.Duration
	// RetryMin and RetryMax bound the backoff after a failed POST
	// (doubling, with jitter); GiveUp is how long an event is retried.
	RetryMin, RetryMax, GiveUp time.Duration
	// AllowHTTP allows http:// URLs; by default only https://.
	AllowHTTP bool
	// AllowedDestinations are special-purpose networks webhooks may reach.
	AllowedDestinations []netip.Prefix
	// LagEvery is how often mailfleet_webhook_lag_seconds is measured
	// (default 15 s).
	LagEvery time.Duration
}

// StatusReporter hears what the relays' webhooks' endpoints disabled, for
// the operator (kubesource.StatusConfigMap writes it where the operator reads it).
type StatusReporter interface {
	Report(ctx context.Context, s wire.WebhookStatus) error
}

// Deps are the dispatcher's collaborators.
type Deps struct {
	Conn     *nats.Conn
	Accounts Accounts
	// Status, when set, is told of the disabled webhooks.
	Status StatusReporter
	// Resolver answers webhook hosts' addresses (default net.DefaultResolver).
	Resolver   Resolver
	Registerer prometheus.Registerer
	Log        *slog.Logger
}

// Dispatcher runs a sender per webhook.
type Dispatcher struct {
	cfg      Config
	deps     Deps
	log      *slog.Logger
	js       jetstream.JetStream
	stream   jetstream.Stream
	disabled *disabledSet
	guard    *guard
	metrics  *metrics

	mu      sync.Mutex
	senders map[string]*sender

	// lagOK and lagFailing are the last measured lags, float64 bits.
	lagOK, lagFailing atomic.Uint64
}

// New makes the dispatcher; Run starts it.
func New(ctx context.Context, cfg Config, deps Deps) (*Dispatcher, error) {
	if deps.Conn == nil || deps.Accounts == nil || cfg.QueueStream == "" {
		return nil, errors.New("webhook: a NATS connection, the accounts and the queue's stream are required")
	}
	defaults(&cfg, &deps)
	js, err := jetstream.New(deps.Conn)
	if err != nil {
		return nil, fmt.Errorf("webhook: jetstream: %w", err)
	}
	// The producer (relay/events) makes the stream, with the configured
	// retention; the dispatcher only reads it.
	stream, err := js.Stream(ctx, wire.EventsStream(cfg.QueueStream))
	if err != nil {
		return nil, fmt.Errorf("webhook: events stream %s: %w", wire.EventsStream(cfg.QueueStream), err)
	}
	d := &Dispatcher{
		cfg: cfg, deps: deps, log: deps.Log, js: js, stream: stream, senders: map[string]*sender{},
		guard: &guard{resolver: deps.Resolver, allowed: cfg.AllowedDestinations, allowHTTP: cfg.AllowHTTP, dialer: net.Dialer{Timeout: cfg.Timeout}},
	}
	if d.disabled, err = openDisabled(ctx, js, cfg, deps.Log); err != nil {
		return nil, err
	}
	d.metrics = newMetrics(deps.Registerer, d.disabled.count, d.lag, d.failingCount)
	return d, nil
}

func defaults(cfg *Config, deps *Deps) {
	set := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	set(&cfg.BatchWait, DefaultBatchWait)
	set(&cfg.Timeout, DefaultTimeout)
	set(&cfg.RetryMin, DefaultRetryMin)
	set(&cfg.RetryMax, DefaultRetryMax)
	set(&cfg.GiveUp, DefaultGiveUp)
	set(&cfg.LagEvery, 15*time.Second)
	if deps.Resolver == nil {
		deps.Resolver = net.DefaultResolver
	}
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
}

// Run keeps a sender per webhook of the credentials until ctx ends.
func (d *Dispatcher) Run(ctx context.Context) error {
	go d.disabled.watch(ctx)
	go d.measureLag(ctx)
	if d.deps.Status != nil {
		go d.disabled.report(ctx, d.deps.Status)
	}
	// A source that counts its changes (both of the relay's do) is
	// looked at often, so that a webhook added, or the credentials loaded
	// at start, get their consumer at once: a consumer takes the events
	// written after it was made.
	gen, counted := d.deps.Accounts.(interface{ Generation() uint64 })
	t := time.NewTicker(changeCheckEvery)
	defer t.Stop()
	var seen uint64
	var synced time.Time
	for {
		if (counted && gen.Generation() != seen) || time.Since(synced) >= syncEvery {
			if counted {
				seen = gen.Generation()
			}
			d.sync(ctx)
			synced = time.Now()
		}
		select {
		case <-ctx.Done():
			d.stopAll()
			return nil
		case <-t.C:
		}
	}
}

// hook is one account's webhook, as its sender sees it.
type hook struct {
	key     string // names its consumer and its disabled mark
	apiUser string
	wire.Webhook
}

// hookKey names a webhook (wire.WebhookKey).
func hookKey(apiUser, url string) string { return wire.WebhookKey(apiUser, url) }

// desired are the webhooks of the current credentials.
func (d *Dispatcher) desired() map[string]hook {
	out := map[string]hook{}
	for a := range d.deps.Accounts.All() {
		if a.Suspended {
			continue
		}
		for _, w := range a.Webhooks {
			k := hookKey(a.APIUser, w.URL)
			out[k] = hook{key: k, apiUser: a.APIUser, Webhook: w}
		}
	}
	return out
}

// Sync makes the consumers of the credentials' webhooks now, as Run does
// first: a relay does it before it takes mail.
func (d *Dispatcher) Sync(ctx context.Context) { d.sync(ctx) }

// sync starts a sender for each new webhook, updates those whose events
// or secret changed, stops those that are gone, and forgets the disabled
// marks of webhooks their accounts no longer have.
func (d *Dispatcher) sync(ctx context.Context) {
	want := d.desired()
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, s := range d.senders {
		if _, ok := want[k]; !ok {
			s.stop()
			delete(d.senders, k)
		}
	}
	d.forgetRemoved(ctx)
	for k, h := range want {
		if s, ok := d.senders[k]; ok {
			if err := s.update(ctx, h); err != nil {
				d.log.Warn("update a webhook's consumer", "account", h.apiUser, "webhook", k, "err", err)
			}
			continue
		}
		s, err := d.startSender(ctx, h)
		if err != nil {
			d.log.Warn("start a webhook's consumer; trying again shortly", "account", h.apiUser, "webhook", k, "err", err)
			continue
		}
		d.senders[k] = s
	}
}

func (d *Dispatcher) stopAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, s := range d.senders {
		s.stop()
		delete(d.senders, k)
	}
}

// consumerConfig takes the account's events of the webhook's types, from
// when the webhook first appears: a new endpoint does not get the past.
func (d *Dispatcher) consumerConfig(h hook) jetstream.ConsumerConfig {
	types := h.Events
	if len(types) == 0 {
		types = wire.WebhookEventTypes
	}
	var subjects []string
	for _, t := range types {
		subjects = append(subjects, events.Subject(d.cfg.QueueStream, events.Event{Type: events.Type(t), APIUser: h.apiUser}))
	}
	return jetstream.ConsumerConfig{
		Durable:           h.key,
		Description:       "mailfleet: a webhook's delivery events",
		FilterSubjects:    subjects,
		DeliverPolicy:     jetstream.DeliverNewPolicy,
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           2*d.cfg.Timeout + d.cfg.BatchWait,
		MaxDeliver:        -1,
		MaxAckPending:     4 * d.cfg.BatchSize,
		InactiveThreshold: inactive,
		Replicas:          d.cfg.Replicas,
	}
}
