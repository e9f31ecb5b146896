// Package dispatch runs the delivery workers: they take messages from the
// queue, hand them to the transport, and then finish each one: done when
// every recipient was delivered or bounced, a retry with backoff for the
// recipients that failed temporarily, and a bounce (delivery status
// notification) to the sender for those that failed for good.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailfleet/mailfleet/relay/delivery"
	"github.com/mailfleet/mailfleet/relay/events"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// Defaults.
const (
	// DefaultWorkers is more than a destination's limit (DefaultPerDomain)
	// on purpose: a worker waiting for one of a domain's slots already
	// holds its next message (and keeps it touched), so the time a pull
	// from the queue takes, milliseconds while sessions are writing to the
	// same stream, is not spent between one delivery and the next. With 16
	// workers, fewer than the limit, 100 KB messages were delivered ~30 %
	// slower than they were accepted (hack/bench/peers). Postfix's
	// default_process_limit is 100.
	DefaultWorkers = 64
	// DefaultPerDomain is Postfix's default_destination_concurrency_limit.
	DefaultPerDomain  = 20
	DefaultTouchEvery = 20 * time.Second
	// bounceRetry is the delay before trying again a message whose bounce
	// could not be queued.
	bounceRetry = time.Minute
)

// BuildDSN renders the delivery status notification that tells the sender
// of orig that the failed recipients will not get it. body reads the
// original message. It returns the notification's bytes, header and body.
// The dispatcher queues it from the null sender to orig.From, and never
// calls BuildDSN when orig.From is the null sender.
type BuildDSN func(orig spool.Envelope, failed []delivery.Result, body io.Reader, now time.Time) ([]byte, error)

// IDs names queued messages (queueid.Generator is one).
type IDs interface {
	Next() string
}

// Events records delivery events (events.Producer is one). Emit must not
// wait: a message's outcome never waits for its events.
type Events interface {
	Emit(evs ...events.Event)
}

// Config tunes a Dispatcher; zero values take the defaults.
type Config struct {
	// Workers is how many messages this process delivers at once.
	Workers int
	// PerDomain bounds the deliveries to one recipient domain at once in
	// this process.
	PerDomain int
	// Backoff is the retry schedule and the queue lifetime (default
	// delivery.DefaultBackoff: Postfix's).
	Backoff delivery.Backoff
	// Destination labels the delivery metrics: the smarthost's name, "mx"
	// or "local". Never a recipient or anything secret.
	Destination string
	// TouchEvery is how often a delivery in progress tells the queue it is
	// still going; it must be well under the queue's AckWait.
	TouchEvery time.Duration
}

// Deps are the dispatcher's collaborators.
type Deps struct {
	Queue     spool.Consumer
	Spool     spool.Spool // where bounces are queued; the same queue
	Transport delivery.Transport
	DSN       BuildDSN
	IDs       IDs
	// Events receives an event per recipient and attempt; nil records none.
	Events Events
	// Suppressions is checked before each attempt and told of hard
	// bounces; nil keeps no list.
	Suppressions Suppressions
	// Registerer receives the delivery metrics; nil registers nothing.
	Registerer prometheus.Registerer
	Log        *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Dispatcher runs the delivery workers.
type Dispatcher struct {
	cfg     Config
	deps    Deps
	log     *slog.Logger
	now     func() time.Time
	domains *delivery.DomainLimiter
	metrics *metrics
}

// New checks the configuration and makes a Dispatcher.
func New(cfg Config, deps Deps) (*Dispatcher, error) {
	if cfg.Workers == 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.PerDomain == 0 {
		cfg.PerDomain = DefaultPerDomain
	}
	if cfg.Backoff.Lifetime == 0 && cfg.Backoff.Min == 0 && len(cfg.Backoff.Schedule) == 0 {
		cfg.Backoff = delivery.DefaultBackoff()
	}
	if cfg.TouchEvery == 0 {
		cfg.TouchEvery = DefaultTouchEvery
	}
	if cfg.Destination == "" {
		cfg.Destination = "unknown"
	}
	var errs []error
	if cfg.Workers < 0 || cfg.PerDomain < 0 {
		errs = append(errs, errors.New("dispatch: workers and per-domain limit must be positive"))
	}
	if err := cfg.Backoff.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("dispatch: %w", err))
	}
	if deps.Queue == nil || deps.Spool == nil || deps.Transport == nil || deps.DSN == nil || deps.IDs == nil {
		errs = append(errs, errors.New("dispatch: queue, spool, transport, DSN builder and ids are all required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Events == nil {
		deps.Events = noEvents{}
	}
	if deps.Suppressions == nil {
		deps.Suppressions = noSuppressions{}
	}
	return &Dispatcher{
		cfg: cfg, deps: deps, log: deps.Log, now: deps.Now,
		domains: delivery.NewDomainLimiter(cfg.PerDomain),
		metrics: newMetrics(deps.Registerer),
	}, nil
}

// Run delivers until ctx ends, then waits for the deliveries in progress
// to finish. Those run on without ctx's cancellation: a delivery cut off
// half way would be repeated in full by whoever gets the message next. The
// transport's own timeouts bound them; a process killed meanwhile leaves
// the message to be handed out again.
func (d *Dispatcher) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range d.cfg.Workers {
		wg.Go(func() { d.work(ctx) })
	}
	wg.Wait()
	return nil
}

func (d *Dispatcher) work(ctx context.Context) {
	for {
		p, err := d.deps.Queue.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d.log.Error("take a message from the queue", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		d.handle(context.WithoutCancel(ctx), p)
	}
}

// handle delivers one message and finishes it with Done or Retry. Errors
// are logged: a message whose Done or Retry failed comes back after the
// queue's AckWait, which is the retry.
func (d *Dispatcher) handle(ctx context.Context, p spool.Pending) {
	env, suppressed := d.withoutSuppressed(ctx, p.Envelope())
	log := d.log.With("id", env.ID)
	var results []delivery.Result
	if len(env.To) > 0 {
		stopTouch := d.keepTouching(ctx, p, log)
		results = d.deliver(ctx, p, env)
		stopTouch()
	}

	var delivered, deferred, failed []delivery.Result
	for _, r := range results {
		switch r.Outcome {
		case delivery.Delivered:
			delivered = append(delivered, r)
		case delivery.Failed:
			failed = append(failed, r)
		default:
			deferred = append(deferred, r)
		}
	}
	now := d.now()
	d.suppressHardBounces(ctx, env, failed, now)
	d.metrics.count(d.cfg.Destination, "suppressed", len(suppressed))
	var delay time.Duration
	expired := false
	if len(deferred) > 0 {
		delay, expired = d.cfg.Backoff.Next(p.Attempts()+1, env.ReceivedAt, now)
	}
	d.metrics.count(d.cfg.Destination, "delivered", len(delivered))
	d.metrics.count(d.cfg.Destination, "failed", len(failed))
	var expiredRs []delivery.Result
	if expired {
		d.metrics.count(d.cfg.Destination, "expired", len(deferred))
		for _, r := range deferred {
			expiredRs = append(expiredRs, delivery.Expire(r, d.cfg.Backoff.Lifetime))
		}
		failed = append(failed, expiredRs...)
		deferred = nil
	} else {
		d.metrics.count(d.cfg.Destination, "deferred", len(deferred))
	}
	report := attemptReport{env: env, attempt: p.Attempts() + 1, at: now, delivered: delivered, deferred: deferred, suppressed: suppressed}

	if len(failed) > 0 {
		if err := d.bounce(ctx, p, env, failed, now); err != nil {
			// Nothing is dropped without its bounce: the failed
			// recipients are tried again, and bounced then.
			log.Error("queue the bounce; the message stays queued", "failed", len(failed), "err", err)
			retry := append(recipients(deferred), recipients(failed)...)
			delay = max(delay, bounceRetry)
			d.report(report, now.Add(delay))
			d.retry(ctx, p, log, retry, delay)
			return
		}
		report.bounced, report.expired = failed[:len(failed)-len(expiredRs)], expiredRs
	}
	d.report(report, now.Add(delay))
	if len(deferred) > 0 {
		d.retry(ctx, p, log, recipients(deferred), delay)
		return
	}
	if err := p.Done(ctx); err != nil {
		log.Error("remove a finished message from the queue; it will be delivered again", "err", err)
		return
	}
	log.Info("message finished", "delivered", len(delivered), "bounced", len(failed), "suppressed", len(suppressed), "attempts", p.Attempts()+1)
}

// attemptReport is what one delivery attempt of a message decided, per
// recipient, for its events.
type attemptReport struct {
	env     spool.Envelope
	attempt int
	at      time.Time

	delivered, deferred, bounced, expired, suppressed []delivery.Result
}

// report emits the attempt's events. It runs before the message is
// finished in the queue: a crash in between delivers again and reports
// the same events, with the same ids. Recipients whose bounce could not
// be queued get no event yet; they are tried again and reported then.
func (d *Dispatcher) report(r attemptReport, next time.Time) {
	evs := make([]events.Event, 0, len(r.env.To))
	for _, g := range []struct {
		t  events.Type
		rs []delivery.Result
	}{{events.Delivered, r.delivered}, {events.Deferred, r.deferred}, {events.Bounced, r.bounced}, {events.Expired, r.expired}, {events.Suppressed, r.suppressed}} {
		for _, res := range g.rs {
			evs = append(evs, events.FromResult(g.t, r.env, res, r.attempt, r.at, next))
		}
	}
	if len(evs) > 0 {
		d.deps.Events.Emit(evs...)
	}
}

type noEvents struct{}

func (noEvents) Emit(...events.Event) {}

func (d *Dispatcher) retry(ctx context.Context, p spool.Pending, log *slog.Logger, remaining []string, delay time.Duration) {
	if err := p.Retry(ctx, remaining, delay); err != nil {
		log.Error("schedule a retry; the message comes back after the queue's ack wait", "err", err)
		return
	}
	d.metrics.retries.WithLabelValues(d.cfg.Destination).Inc()
	log.Info("message deferred", "remaining", len(remaining), "attempts", p.Attempts()+1, "retry_in", delay)
}

// keepTouching tells the queue every TouchEvery that the delivery goes on.
func (d *Dispatcher) keepTouching(ctx context.Context, p spool.Pending, log *slog.Logger) func() {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(d.cfg.TouchEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := p.Touch(ctx); err != nil {
					log.Warn("touch a delivery in progress", "err", err)
				}
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
	}
}

// deliver hands the message to the transport once per recipient domain,
// each under that domain's concurrency limit, and returns one result per
// recipient in envelope order.
func (d *Dispatcher) deliver(ctx context.Context, p spool.Pending, env spool.Envelope) []delivery.Result {
	byRcpt := make(map[string]delivery.Result, len(env.To))
	for _, g := range groupByDomain(env.To) {
		release, err := d.domains.Acquire(ctx, g.domain)
		if err != nil {
			err = fmt.Errorf("wait for a delivery slot to %s: %w", g.domain, err)
			for _, rcpt := range g.rcpts {
				byRcpt[rcpt] = delivery.Result{Recipient: rcpt, Outcome: delivery.Deferred, Enhanced: "4.3.0", Text: err.Error()}
			}
			continue
		}
		part := env
		part.To = g.rcpts
		start := time.Now()
		rs := d.deps.Transport.Deliver(ctx, delivery.Message{Envelope: part, Size: p.Size(), Open: p.Open})
		d.metrics.seconds.WithLabelValues(d.cfg.Destination).Observe(time.Since(start).Seconds())
		release()
		for _, r := range rs {
			byRcpt[r.Recipient] = r
		}
	}
	out := make([]delivery.Result, len(env.To))
	for i, rcpt := range env.To {
		r, ok := byRcpt[rcpt]
		if !ok {
			// A transport that skips a recipient has not delivered it.
			r = delivery.Result{Recipient: rcpt, Outcome: delivery.Deferred, Enhanced: "4.3.0", Text: "the transport reported no result for this recipient"}
		}
		out[i] = r
	}
	return out
}

// bounce queues a delivery status notification for the failed recipients,
// from the null sender to the message's sender; none for a message from
// the null sender, which is itself a notification (RFC 5321 §4.5.5).
func (d *Dispatcher) bounce(ctx context.Context, p spool.Pending, env spool.Envelope, failed []delivery.Result, now time.Time) error {
	if strings.Trim(env.From, "<> ") == "" {
		d.log.Info("no bounce for a message from the null sender", "id", env.ID, "failed", len(failed))
		return nil
	}
	body, err := p.Open()
	if err != nil {
		return fmt.Errorf("open the original message: %w", err)
	}
	defer body.Close()
	dsn, err := d.deps.DSN(env, failed, body, now)
	if err != nil {
		return fmt.Errorf("build the bounce: %w", err)
	}
	benv := spool.Envelope{
		ID:         d.deps.IDs.Next(),
		APIUser:    env.APIUser,
		LabelID:    env.LabelID,
		From:       "",
		To:         []string{env.From},
		ReceivedAt: now.UTC(),
	}
	w, err := d.deps.Spool.Begin(ctx, benv)
	if err != nil {
		return fmt.Errorf("queue the bounce: %w", err)
	}
	if _, err := w.Write(dsn); err != nil {
		return errors.Join(fmt.Errorf("queue the bounce: %w", err), w.Abort())
	}
	if err := w.Commit(ctx); err != nil {
		return fmt.Errorf("queue the bounce: %w", err)
	}
	d.metrics.bounces.WithLabelValues(d.cfg.Destination).Inc()
	d.log.Info("bounce queued", "id", env.ID, "bounce_id", benv.ID, "failed", len(failed))
	return nil
}

func recipients(rs []delivery.Result) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Recipient
	}
	return out
}

type domainGroup struct {
	domain string
	rcpts  []string
}

// groupByDomain groups recipients by their domain, in order of first
// appearance. Domains compare case-insensitively (RFC 5321 §2.4).
func groupByDomain(rcpts []string) []domainGroup {
	var groups []domainGroup
	index := map[string]int{}
	for _, r := range rcpts {
		dom := ""
		if at := strings.LastIndexByte(r, '@'); at >= 0 {
			dom = strings.ToLower(r[at+1:])
		}
		i, ok := index[dom]
		if !ok {
			i = len(groups)
			index[dom] = i
			groups = append(groups, domainGroup{domain: dom})
		}
		groups[i].rcpts = append(groups[i].rcpts, r)
	}
	return groups
}
