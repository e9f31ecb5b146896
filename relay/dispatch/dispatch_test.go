package dispatch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailfleet/mailfleet/relay/delivery"
	"github.com/mailfleet/mailfleet/relay/queue"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// call is one Deliver the transport saw.
type call struct {
	env  spool.Envelope
	body string
}

// scripted is a transport that answers per recipient domain: ok.example
// delivers, temp.example defers until it is told to recover, perm.example
// fails. It records every call and the most deliveries in progress at once.
type scripted struct {
	mu        sync.Mutex
	calls     []call
	recovered atomic.Bool
	holding   atomic.Bool   // when set, Deliver waits for release
	held      chan struct{} // closed by release
	once      sync.Once
	inFlight  atomic.Int32
	peak      atomic.Int32
}

func (s *scripted) Deliver(ctx context.Context, msg delivery.Message) []delivery.Result {
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for {
		p := s.peak.Load()
		if n <= p || s.peak.CompareAndSwap(p, n) {
			break
		}
	}
	if s.holding.Load() {
		<-s.held
	}
	r, err := msg.Open()
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(r)
	r.Close()
	s.mu.Lock()
	s.calls = append(s.calls, call{env: msg.Envelope, body: string(body)})
	s.mu.Unlock()
	out := make([]delivery.Result, len(msg.Envelope.To))
	for i, rcpt := range msg.Envelope.To {
		res := delivery.Result{Recipient: rcpt, Outcome: delivery.Delivered, Code: 250, Enhanced: "2.0.0", Text: "ok", RemoteMTA: "sink.test"}
		switch {
		case strings.HasSuffix(rcpt, "@perm.example"):
			res.Outcome, res.Code, res.Enhanced, res.Text = delivery.Failed, 550, "5.1.1", "no such user"
		case strings.HasSuffix(rcpt, "@temp.example") && !s.recovered.Load():
			res.Outcome, res.Code, res.Enhanced, res.Text = delivery.Deferred, 451, "4.3.0", "try later"
		}
		out[i] = res
	}
	return out
}

func newScripted() *scripted { return &scripted{held: make(chan struct{})} }

func (s *scripted) release() { s.once.Do(func() { close(s.held) }) }

func (s *scripted) seen() []call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// waitFor polls until cond holds.
func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type counter struct{ n atomic.Int64 }

func (c *counter) Next() string { return fmt.Sprintf("bounce-%d", c.n.Add(1)) }

// fakeDSN renders a recognisable notification; the real one is relay/dsn's.
func fakeDSN(orig spool.Envelope, failed []delivery.Result, body io.Reader, now time.Time) ([]byte, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return nil, err
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "Subject: bounce of %s\r\n\r\n", orig.ID)
	for _, r := range failed {
		fmt.Fprintf(&sb, "%s %s %s\r\n", r.Recipient, r.Enhanced, r.Text)
	}
	fmt.Fprintf(&sb, "original %d bytes\r\n", len(b))
	return []byte(sb.String()), nil
}

type harness struct {
	q         *queue.Queue
	transport *scripted
	reg       *prometheus.Registry
	spool     spool.Spool
}

func start(t *testing.T, cfg Config, tune func(*Deps)) *harness {
	t.Helper()
	q, err := queue.Open(context.Background(), queue.Options{Dir: t.TempDir(), AckWait: 10 * time.Second,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{q: q, transport: newScripted(), reg: prometheus.NewRegistry(), spool: q}
	if cfg.Backoff.Lifetime == 0 {
		cfg.Backoff = delivery.Backoff{Schedule: []time.Duration{time.Second}, Lifetime: 5 * 24 * time.Hour}
	}
	cfg.Destination = "test-smarthost"
	deps := Deps{Queue: q, Spool: q, Transport: h.transport, DSN: fakeDSN, IDs: &counter{}, Registerer: h.reg,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if tune != nil {
		tune(&deps)
	}
	runDispatcher(t, cfg, deps, h.transport.release, func() { q.Close() })
	return h
}

// runDispatcher makes a Dispatcher and runs it until the test ends. At
// cleanup it is cancelled, unblock (when not nil) frees deliveries a test
// transport holds, and once it has stopped, release closes what it used.
func runDispatcher(tb testing.TB, cfg Config, deps Deps, unblock, release func()) {
	tb.Helper()
	d, err := New(cfg, deps)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	tb.Cleanup(func() {
		cancel()
		if unblock != nil {
			unblock()
		}
		<-done
		release()
	})
}

func (h *harness) submit(t *testing.T, env spool.Envelope, body string) {
	t.Helper()
	w, err := h.q.Begin(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, body)
	if err := w.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func env(id, from string, to ...string) spool.Envelope {
	return spool.Envelope{ID: id, APIUser: "acme", LabelID: "1001", From: from, To: to, ReceivedAt: time.Now().UTC()}
}

func (h *harness) deliveries(outcome string) float64 {
	return testutil.ToFloat64(must(h.reg, outcome))
}

func must(reg *prometheus.Registry, outcome string) prometheus.Collector {
	c := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
	families, _ := reg.Gather()
	for _, f := range families {
		if f.GetName() != "mailfleet_deliveries_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["outcome"] == outcome && labels["destination"] == "test-smarthost" {
				c.Set(m.GetCounter().GetValue())
			}
		}
	}
	return c
}

func TestDeliveredMessageLeavesTheQueue(t *testing.T) {
	h := start(t, Config{}, nil)
	h.submit(t, env("m1", "s@acme.example", "a@ok.example", "b@ok.example"), "Subject: hi\r\n\r\nbody\r\n")
	waitFor(t, "delivery", 10*time.Second, func() bool { return h.deliveries("delivered") == 2 })
	calls := h.transport.seen()
	if len(calls) != 1 || !reflect.DeepEqual(calls[0].env.To, []string{"a@ok.example", "b@ok.example"}) ||
		calls[0].body != "Subject: hi\r\n\r\nbody\r\n" {
		t.Fatalf("transport saw %+v", calls)
	}
	waitFor(t, "an empty queue", 10*time.Second, func() bool { return depth(t, h.q) == 0 })
}

// depth reads the queue's depth the way its gauge does.
func depth(t *testing.T, q *queue.Queue) uint64 {
	t.Helper()
	n, err := q.Depth(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMixedOutcomes: one recipient delivered, one deferred, one failed.
// The sender gets a bounce for the failed one only, the deferred one is
// retried alone after the backoff, and the delivered one is not sent again.
func TestMixedOutcomes(t *testing.T) {
	h := start(t, Config{}, nil)
	h.submit(t, env("mixed", "sender@acme.example", "a@ok.example", "b@temp.example", "c@perm.example"), "Subject: mixed\r\n\r\nhello\r\n")

	waitFor(t, "the bounce's delivery", 10*time.Second, func() bool {
		return slices.ContainsFunc(h.transport.seen(), func(c call) bool { return c.env.From == "" })
	})
	var bounce call
	for _, c := range h.transport.seen() {
		if c.env.From == "" {
			bounce = c
		}
	}
	if !reflect.DeepEqual(bounce.env.To, []string{"sender@acme.example"}) || bounce.env.APIUser != "acme" ||
		!strings.Contains(bounce.body, "c@perm.example 5.1.1 no such user") || strings.Contains(bounce.body, "b@temp.example") {
		t.Fatalf("bounce: %+v", bounce)
	}
	h.transport.recovered.Store(true)
	waitFor(t, "the retry", 10*time.Second, func() bool { return h.deliveries("delivered") == 3 })
	var toTemp, toOK int
	for _, c := range h.transport.seen() {
		for _, r := range c.env.To {
			switch r {
			case "b@temp.example":
				toTemp++
			case "a@ok.example":
				toOK++
			}
		}
	}
	if toTemp != 2 || toOK != 1 {
		t.Fatalf("b@temp.example tried %d times (want 2), a@ok.example %d (want 1)", toTemp, toOK)
	}
	if h.deliveries("failed") != 1 || h.deliveries("deferred") != 1 {
		t.Fatalf("failed %v deferred %v", h.deliveries("failed"), h.deliveries("deferred"))
	}
	if got := testutil.ToFloat64(metricVec(t, h.reg, "mailfleet_delivery_retries_total")); got != 1 {
		t.Fatalf("retries %v", got)
	}
	waitFor(t, "an empty queue", 10*time.Second, func() bool { return depth(t, h.q) == 0 })
}

func metricVec(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	c := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
	families, _ := reg.Gather()
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				c.Add(m.GetCounter().GetValue() + m.GetGauge().GetValue())
			}
		}
	}
	return c
}

func TestNoBounceToTheNullSender(t *testing.T) {
	h := start(t, Config{}, nil)
	h.submit(t, env("from-null", "", "c@perm.example"), "Subject: a bounce\r\n\r\n")
	waitFor(t, "the failure", 10*time.Second, func() bool { return h.deliveries("failed") == 1 })
	waitFor(t, "an empty queue", 10*time.Second, func() bool { return depth(t, h.q) == 0 })
	time.Sleep(300 * time.Millisecond)
	if calls := h.transport.seen(); len(calls) != 1 {
		t.Fatalf("a bounce went out for a message from <>: %+v", calls)
	}
}

func TestExpiredMessageBouncesInsteadOfRetrying(t *testing.T) {
	h := start(t, Config{}, nil)
	old := env("old", "sender@acme.example", "b@temp.example")
	old.ReceivedAt = time.Now().Add(-6 * 24 * time.Hour)
	h.submit(t, old, "Subject: old\r\n\r\n")
	waitFor(t, "the bounce", 10*time.Second, func() bool { return len(h.transport.seen()) == 2 })
	bounce := h.transport.seen()[1]
	if bounce.env.From != "" || !strings.Contains(bounce.body, "b@temp.example 5.4.7 delivery time expired") {
		t.Fatalf("bounce %+v", bounce)
	}
	if h.deliveries("expired") != 1 || h.deliveries("deferred") != 0 {
		t.Fatalf("expired %v deferred %v", h.deliveries("expired"), h.deliveries("deferred"))
	}
	waitFor(t, "an empty queue", 10*time.Second, func() bool { return depth(t, h.q) == 0 })
}

// failingSpool refuses bounces.
type failingSpool struct{}

func (failingSpool) Begin(context.Context, spool.Envelope) (spool.Writer, error) {
	return nil, errors.New("queue unavailable")
}

// TestBounceThatCannotBeQueuedKeepsTheMessage: without its bounce a failed
// recipient is not dropped; the message is retried for it.
func TestBounceThatCannotBeQueuedKeepsTheMessage(t *testing.T) {
	h := start(t, Config{}, func(d *Deps) { d.Spool = failingSpool{} })
	h.submit(t, env("nobounce", "sender@acme.example", "a@ok.example", "c@perm.example"), "Subject: x\r\n\r\n")
	waitFor(t, "the first attempt", 10*time.Second, func() bool { return h.deliveries("failed") == 1 })
	waitFor(t, "the retry to be scheduled", 10*time.Second, func() bool {
		return testutil.ToFloat64(metricVec(t, h.reg, "mailfleet_delivery_retries_total")) == 1
	})
	if n := depth(t, h.q); n != 1 {
		t.Fatalf("queue depth %d, want the retried message", n)
	}
}

func TestPerDomainLimit(t *testing.T) {
	h := start(t, Config{Workers: 8, PerDomain: 2}, nil)
	h.transport.holding.Store(true)
	for i := range 6 {
		h.submit(t, env(fmt.Sprintf("d%d", i), "s@acme.example", fmt.Sprintf("r%d@ok.example", i)), "x")
	}
	h.submit(t, env("other", "s@acme.example", "r@other.example"), "x")
	waitFor(t, "3 deliveries in progress", 10*time.Second, func() bool { return h.transport.inFlight.Load() == 3 })
	time.Sleep(300 * time.Millisecond)
	if n := h.transport.inFlight.Load(); n != 3 {
		t.Fatalf("%d deliveries in progress, want 2 to ok.example and 1 to other.example", n)
	}
	h.transport.release()
	waitFor(t, "every delivery", 10*time.Second, func() bool { return h.deliveries("delivered") == 7 })
	if p := h.transport.peak.Load(); p != 3 {
		t.Fatalf("peak concurrency %d", p)
	}
}

func TestTouchKeepsALongDeliveryOwned(t *testing.T) {
	q, err := queue.Open(context.Background(), queue.Options{Dir: t.TempDir(), AckWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tr := newScripted()
	tr.holding.Store(true)
	runDispatcher(t, Config{Workers: 2, TouchEvery: 200 * time.Millisecond, Destination: "test-smarthost"},
		Deps{Queue: q, Spool: q, Transport: tr, DSN: fakeDSN, IDs: &counter{}}, tr.release, func() { q.Close() })
	w, _ := q.Begin(context.Background(), env("slow", "s@acme.example", "a@ok.example"))
	io.WriteString(w, "x")
	if err := w.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Three ack waits pass while the transport works; the other worker
	// must not get the message meanwhile.
	time.Sleep(3 * time.Second)
	if n := tr.peak.Load(); n != 1 {
		t.Fatalf("%d deliveries of one message at once", n)
	}
	tr.release()
	waitFor(t, "the delivery", 10*time.Second, func() bool { return len(tr.seen()) == 1 })
	waitFor(t, "an empty queue", 10*time.Second, func() bool { return depth(t, q) == 0 })
	if n := len(tr.seen()); n != 1 {
		t.Fatalf("delivered %d times", n)
	}
}

func TestGroupByDomain(t *testing.T) {
	got := groupByDomain([]string{"a@X.example", "b@y.example", "c@x.EXAMPLE", "postmaster"})
	want := []domainGroup{
		{"x.example", []string{"a@X.example", "c@x.EXAMPLE"}},
		{"y.example", []string{"b@y.example"}},
		{"", []string{"postmaster"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v", got)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	_, err := New(Config{Backoff: delivery.Backoff{Min: time.Minute, Max: time.Second, Lifetime: time.Hour}}, Deps{})
	if err == nil || !strings.Contains(err.Error(), "backoff") || !strings.Contains(err.Error(), "required") {
		t.Fatalf("New: %v", err)
	}
}
