package events

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/queue"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// Defaults.
const (
	// DefaultMaxAge is how long the events stream keeps an event: long
	// enough for a webhook to be retried for a day (the dispatcher's
	// limit) and for an endpoint fixed after a long weekend to catch up.
	DefaultMaxAge = 7 * 24 * time.Hour
	// DefaultMaxBytes bounds the events stream, which shares JetStream's
	// storage with the queue: a busy relay's week of events could
	// otherwise fill it and turn mail away. Past it the oldest events go.
	// JetStream reserves a stream's MaxBytes out of the server's store, so
	// this is kept small enough for dozens of relays on the chart's 10 GiB
	// volumes: about 600,000 events.
	DefaultMaxBytes = 256 << 20
	// DefaultBuffer is how many events wait in memory while the stream
	// cannot take them: minutes of a busy relay's events.
	DefaultBuffer = 100_000
	// maxBatch is the most events in one atomic batch (the server's
	// default limit is 1000 messages).
	maxBatch = 1000
	// publishTimeout bounds one write to the stream.
	publishTimeout = 10 * time.Second
	// duplicateWindow is how long the server remembers an event id: an
	// outcome reported again after a crash usually comes back within the
	// queue's AckWait (1 min). Later copies reach receivers with the same
	// id.
	duplicateWindow = 5 * time.Minute
	retryMin        = 100 * time.Millisecond
	retryMax        = 10 * time.Second
)

// Options configure a Producer.
type Options struct {
	// Conn is the queue's connection (queue.Queue.Conn).
	Conn *nats.Conn
	// Stream is the queue stream; the events go to EventsStream(Stream).
	Stream string
	// Replicas of the events stream (the queue's).
	Replicas int
	// MaxAge is how long an event is kept (default DefaultMaxAge).
	MaxAge time.Duration
	// MaxBytes bounds the stream (default DefaultMaxBytes).
	MaxBytes int64
	// Buffer bounds the events waiting to be written (default
	// DefaultBuffer); past it events are dropped and counted.
	Buffer     int
	Registerer prometheus.Registerer
	Log        *slog.Logger
}

// Producer writes events to the events stream.
//
// Emit never waits for the stream: an outcome is decided, and a message
// acknowledged, whatever becomes of its events. Events wait in a bounded
// buffer and are written in atomic batches by one goroutine. While the
// stream cannot take them (NATS unreachable, the stream deleted or full)
// the writer retries with backoff and re-creates a stream that is gone;
// the buffer fills meanwhile, and once it is full further events are
// dropped, counted in mailfleet_events_dropped_total and logged. Events
// still buffered when the relay stops get what is left of its grace
// period, and a relay killed loses those it had buffered: delivery events
// are at most once from the buffer to the stream, and at least once (with
// the same id) from the stream to receivers.
type Producer struct {
	opts    Options
	log     *slog.Logger
	nc      *nats.Conn
	js      jetstream.JetStream
	stream  string
	subject string
	in      chan Event
	pending atomic.Int64 // taken from in, not yet written
	metrics *metrics
	drops   dropLog

	stopOnce sync.Once
	stop     chan struct{}
	flush    context.Context
	done     chan struct{}
	closed   atomic.Bool
}

// Open makes or updates the events stream and starts the writer.
func Open(ctx context.Context, o Options) (*Producer, error) {
	if o.Conn == nil || o.Stream == "" {
		return nil, errors.New("events: a NATS connection and the queue's stream are required")
	}
	if o.MaxAge == 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.Buffer == 0 {
		o.Buffer = DefaultBuffer
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return nil, fmt.Errorf("events: jetstream: %w", err)
	}
	p := &Producer{
		opts: o, log: o.Log.With("stream", wire.EventsStream(o.Stream)), nc: o.Conn, js: js,
		stream: wire.EventsStream(o.Stream), subject: wire.SubjectsOf(o.Stream).Events,
		in: make(chan Event, o.Buffer), stop: make(chan struct{}), done: make(chan struct{}),
	}
	// A stream that cannot be made now does not stop the relay: mail
	// matters more than its events, which wait in the buffer while the
	// writer makes the stream again.
	if err := p.ensureStream(ctx); err != nil {
		p.log.Warn("events stream not ready; events wait in memory until it is", "err", err)
	}
	p.metrics = newMetrics(o.Registerer, func() float64 { return float64(len(p.in)) + float64(p.pending.Load()) })
	go p.run()
	return p, nil
}

// StreamConfig is the events stream's configuration.
func StreamConfig(queueStream string, replicas int, maxAge time.Duration, maxBytes int64) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:               wire.EventsStream(queueStream),
		Description:        "mailfleet: delivery events, for the accounts' webhooks",
		Subjects:           []string{wire.SubjectsOf(queueStream).Events + ".>"},
		Retention:          jetstream.LimitsPolicy,
		Storage:            jetstream.FileStorage,
		Replicas:           replicas,
		MaxAge:             maxAge,
		MaxBytes:           maxBytes,
		Discard:            jetstream.DiscardOld,
		Duplicates:         duplicateWindow,
		AllowAtomicPublish: true,
	}
}

func (p *Producer) ensureStream(ctx context.Context) error {
	_, err := p.js.CreateOrUpdateStream(ctx, StreamConfig(p.opts.Stream, p.opts.Replicas, p.opts.MaxAge, p.opts.MaxBytes))
	if err != nil {
		return fmt.Errorf("events: create or update stream %s: %w", p.stream, err)
	}
	return nil
}

// Subject is where an event is written: <events>.<type>.<account token>,
// so that a consumer can take one account's events of the types it
// wants. The api_user is hex-encoded into one token: written as it is, a
// name with dots ("acme." or "a..b", which the id pattern allows) made an
// empty token, a subject no stream takes, and the producer retried that
// event forever in front of every other account's.
func Subject(queueStream string, ev Event) string {
	return wire.SubjectsOf(queueStream).Events + "." + string(ev.Type) + "." + accountToken(ev.APIUser)
}

func accountToken(apiUser string) string {
	return "u" + hex.EncodeToString([]byte(apiUser))
}

// Emit hands events to the writer without waiting; see Producer.
func (p *Producer) Emit(evs ...Event) {
	for _, ev := range evs {
		if p.closed.Load() {
			p.dropped("closed", 1)
			continue
		}
		select {
		case p.in <- ev:
		default:
			p.dropped("buffer_full", 1)
		}
	}
}

// Queued reports a message whose queue write was acknowledged
// (submission.Events).
func (p *Producer) Queued(env spool.Envelope) {
	p.Emit(QueuedEvents(env, time.Now())...)
}

// Suppressed reports a recipient refused at submission because it is
// suppressed (submission.Events).
func (p *Producer) Suppressed(apiUser, labelID, recipient string) {
	p.Emit(RefusedSuppressed(apiUser, labelID, recipient, time.Now()))
}

// Close stops taking events and writes those buffered until ctx ends;
// what is left then is dropped and counted.
func (p *Producer) Close(ctx context.Context) {
	p.stopOnce.Do(func() {
		p.closed.Store(true)
		p.flush = ctx
		close(p.stop)
	})
	<-p.done
}

func (p *Producer) dropped(reason string, n int) {
	p.metrics.dropped.WithLabelValues(reason).Add(float64(n))
	p.drops.note(p.log, reason, n)
}

// run writes what Emit buffered, in batches, until Close.
func (p *Producer) run() {
	defer close(p.done)
	backoff := retryMin
	var batch []Event
	for {
		if len(batch) == 0 {
			select {
			case ev := <-p.in:
				batch = append(batch, ev)
			case <-p.stop:
				p.drain(batch)
				return
			}
		}
		batch = p.fill(batch)
		p.pending.Store(int64(len(batch)))
		left, err := p.write(context.Background(), batch)
		batch = left
		p.pending.Store(int64(len(batch)))
		if err == nil {
			backoff = retryMin
			continue
		}
		p.log.Warn("write delivery events; retrying, messages are not held up", "events", len(batch), "retry_in", backoff, "err", err)
		select {
		case <-time.After(backoff):
		case <-p.stop:
			p.drain(batch)
			return
		}
		backoff = min(2*backoff, retryMax)
	}
}

// fill adds to batch what is buffered, without waiting, up to maxBatch.
func (p *Producer) fill(batch []Event) []Event {
	for len(batch) < maxBatch {
		select {
		case ev := <-p.in:
			batch = append(batch, ev)
		default:
			return batch
		}
	}
	return batch
}

// drain writes batch and everything buffered until the flush context
// ends, and counts the rest as dropped.
func (p *Producer) drain(batch []Event) {
	for {
		batch = p.fill(batch)
		if len(batch) == 0 {
			return
		}
		if p.flush.Err() != nil {
			p.dropped("shutdown", len(batch)+len(p.in))
			p.pending.Store(0)
			return
		}
		left, err := p.write(p.flush, batch)
		if err != nil && len(left) == len(batch) {
			select {
			case <-p.flush.Done():
			case <-time.After(retryMin):
			}
		}
		batch = left
	}
}

// write stores batch as atomic batches and returns what is left of it,
// with the error that left it. A batch that is refused whole (it holds an
// event written before, or the stream is gone) is written one event at a
// time: the server acknowledges a duplicate without storing it again.
func (p *Producer) write(parent context.Context, batch []Event) ([]Event, error) {
	msgs, err := p.encode(batch)
	if err != nil {
		return nil, err // cannot happen for these types; nothing to retry
	}
	ctx, cancel := context.WithTimeout(parent, publishTimeout)
	defer cancel()
	if err := queue.PublishAtomic(ctx, p.nc, p.js, msgs); err == nil {
		p.count(batch)
		return nil, nil
	}
	for i, m := range msgs {
		if _, err := p.js.PublishMsg(ctx, m); err != nil {
			p.count(batch[:i])
			p.recreateIfGone(ctx, err)
			return batch[i:], fmt.Errorf("publish event %s: %w", batch[i].ID, err)
		}
	}
	p.count(batch)
	return nil, nil
}

// recreateIfGone makes the stream again when err says it is missing
// (someone deleted it): the events then have somewhere to go.
func (p *Producer) recreateIfGone(ctx context.Context, err error) {
	if !errors.Is(err, jetstream.ErrNoStreamResponse) && !errors.Is(err, nats.ErrNoResponders) {
		return
	}
	if err := p.ensureStream(ctx); err != nil {
		p.log.Warn("re-create the events stream", "err", err)
	}
}

func (p *Producer) encode(batch []Event) ([]*nats.Msg, error) {
	msgs := make([]*nats.Msg, len(batch))
	for i, ev := range batch {
		data, err := json.Marshal(ev)
		if err != nil {
			return nil, fmt.Errorf("encode event %s: %w", ev.ID, err)
		}
		m := nats.NewMsg(Subject(p.opts.Stream, ev))
		m.Data = data
		m.Header.Set(jetstream.MsgIDHeader, ev.ID)
		msgs[i] = m
	}
	return msgs, nil
}

func (p *Producer) count(evs []Event) {
	for _, ev := range evs {
		p.metrics.produced.WithLabelValues(string(ev.Type)).Inc()
	}
}

// dropLog logs drops at most every dropLogEvery, with how many there were
// since the last line, so an outage does not flood the log.
type dropLog struct {
	mu    sync.Mutex
	last  time.Time
	count int
}

const dropLogEvery = 10 * time.Second

func (d *dropLog) note(log *slog.Logger, reason string, n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.count += n
	if time.Since(d.last) < dropLogEvery {
		return
	}
	log.Error("delivery events dropped: the events stream did not take them in time", "reason", reason, "dropped", d.count)
	d.last, d.count = time.Now(), 0
}
