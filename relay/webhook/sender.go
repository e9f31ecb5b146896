package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// sender posts one webhook's events, from its consumer, until stopped.
type sender struct {
	d    *Dispatcher
	log  *slog.Logger
	hook atomic.Pointer[hook]
	// consumer is replaced when it was deleted (recreateIfGone) while a
	// metrics scrape reads it (lag).
	consumerMu sync.Mutex
	consumer   jetstream.Consumer
	client     *http.Client
	cancel     context.CancelFunc
	done       chan struct{}
	// failures counts the POSTs that failed in a row, for the backoff.
	failures int
	// failing says the last POST failed, for the metrics: an endpoint
	// that fails is its owner's to fix, a relay behind is the platform's.
	failing atomic.Bool
}

func (d *Dispatcher) startSender(ctx context.Context, h hook) (*sender, error) {
	c, err := d.stream.CreateOrUpdateConsumer(ctx, d.consumerConfig(h))
	if err != nil {
		return nil, fmt.Errorf("create consumer %s: %w", h.key, err)
	}
	sctx, cancel := context.WithCancel(ctx)
	s := &sender{d: d, consumer: c, client: d.guard.client(d.cfg.Timeout), cancel: cancel, done: make(chan struct{}),
		log: d.log.With("account", h.apiUser, "webhook", h.key)}
	s.hook.Store(&h)
	go s.run(sctx)
	return s, nil
}

// update applies a changed secret at once and a changed events list to
// the consumer.
func (s *sender) update(ctx context.Context, h hook) error {
	old := s.hook.Swap(&h)
	if slices.Equal(old.Events, h.Events) {
		return nil
	}
	_, err := s.d.stream.CreateOrUpdateConsumer(ctx, s.d.consumerConfig(h))
	return err
}

// recreateIfGone makes the webhook's consumer again when it is gone
// (deleted by hand, or by the server after a long inactivity). A pull from
// a deleted consumer fails in more than one way (deleted, not found, no
// responders), so after any failed pull the consumer is looked up.
func (s *sender) recreateIfGone(ctx context.Context, h *hook) {
	_, err := s.d.stream.Consumer(ctx, h.key)
	if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return
	}
	c, err := s.d.stream.CreateOrUpdateConsumer(ctx, s.d.consumerConfig(*h))
	if err != nil {
		s.log.Warn("re-create a webhook's consumer", "err", err)
		return
	}
	s.log.Info("webhook consumer made again")
	s.consumerMu.Lock()
	s.consumer = c
	s.consumerMu.Unlock()
}

func (s *sender) stop() {
	s.cancel()
	<-s.done
}

func (s *sender) run(ctx context.Context) {
	defer close(s.done)
	for ctx.Err() == nil {
		h := s.hook.Load()
		if s.d.disabled.has(h.key) {
			// Checked again as often as the webhooks are reread, so that
			// one enabled again resumes soon.
			s.wait(ctx, min(s.d.cfg.RetryMax, syncEvery))
			continue
		}
		batch, err := s.currentConsumer().Fetch(s.d.cfg.BatchSize, jetstream.FetchMaxWait(s.d.cfg.BatchWait))
		if err != nil {
			s.log.Warn("fetch a webhook's events", "err", err)
			s.recreateIfGone(ctx, h)
			s.wait(ctx, s.d.cfg.RetryMin)
			continue
		}
		var msgs []jetstream.Msg
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && len(msgs) == 0 {
			s.recreateIfGone(ctx, h)
		}
		if len(msgs) > 0 {
			s.send(ctx, h, msgs)
		}
	}
}

// send posts msgs as one batch and finishes them by the answer: 2xx acks
// them, 410 disables the webhook, anything else retries with backoff.
func (s *sender) send(ctx context.Context, h *hook, msgs []jetstream.Msg) {
	status, err := s.post(ctx, h, msgs)
	switch {
	case err == nil && status >= 200 && status < 300:
		s.failures = 0
		s.failing.Store(false)
		for _, m := range msgs {
			m.Ack()
		}
		s.d.metrics.posted("ok", len(msgs))
	case err == nil && status == http.StatusGone && s.d.disable(ctx, h, s.log) == nil:
		// Disabled: the events wait in the stream. A 410 whose mark could
		// not be written falls to the backoff below, instead of being
		// posted again at once, and again.
		s.d.metrics.posted("gone", len(msgs))
		for _, m := range msgs {
			m.Nak()
		}
	default:
		result := "error"
		if err == nil {
			result = "status"
			err = fmt.Errorf("endpoint answered %d", status)
		}
		if errors.Is(err, errRefused) {
			result = "refused"
		}
		s.d.metrics.posted(result, len(msgs))
		s.failures++
		s.failing.Store(true)
		delay := s.backoff()
		s.log.Warn("webhook POST failed; retrying", "events", len(msgs), "retry_in", delay, "err", err)
		s.retry(msgs, delay)
		s.wait(ctx, delay)
	}
}

// retry hands msgs back for another try after delay, but drops (and
// counts) those older than GiveUp.
func (s *sender) retry(msgs []jetstream.Msg, delay time.Duration) {
	for _, m := range msgs {
		md, err := m.Metadata()
		if err == nil && time.Since(md.Timestamp) > s.d.cfg.GiveUp {
			s.log.Error("webhook event dropped after retrying for too long", "stream_seq", md.Sequence.Stream, "age", time.Since(md.Timestamp).Round(time.Second))
			s.d.metrics.dropped.Inc()
			m.Term()
			continue
		}
		m.NakWithDelay(delay)
	}
}

// backoff doubles from RetryMin per failure in a row up to RetryMax, and
// takes a random part of it, so that relays retrying one endpoint after
// an outage do not come back together.
func (s *sender) backoff() time.Duration {
	d := s.d.cfg.RetryMin
	for i := 1; i < s.failures && d < s.d.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, s.d.cfg.RetryMax)
	return d/2 + rand.N(d/2+1)
}

func (s *sender) wait(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// post sends the batch: a JSON array of the events as stored, signed.
func (s *sender) post(ctx context.Context, h *hook, msgs []jetstream.Msg) (int, error) {
	u, err := s.d.guard.checkURL(h.URL)
	if err != nil {
		return 0, err
	}
	body := batchBody(msgs)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "mailfleet-webhook/1")
	req.Header.Set(SignatureHeader, Sign(h.Secret, time.Now(), body))
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, postError(u, err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode, nil
}

func batchBody(msgs []jetstream.Msg) []byte {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, m := range msgs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(m.Data())
	}
	b.WriteByte(']')
	return b.Bytes()
}

func (s *sender) currentConsumer() jetstream.Consumer {
	s.consumerMu.Lock()
	defer s.consumerMu.Unlock()
	return s.consumer
}

// postError says why a POST failed without the URL's path and query, which
// net/http's errors quote whole: a receiver that authenticates with a token
// in its URL would otherwise find it in the relay's log.
func postError(u *url.URL, err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		err = ue.Err
	}
	return fmt.Errorf("webhook POST to %s://%s: %w", u.Scheme, u.Host, err)
}
