package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/delivery"
	"github.com/mailfleet/mailfleet/relay/events"
	"github.com/mailfleet/mailfleet/relay/queue"
	"github.com/mailfleet/mailfleet/relay/spool"
)

const secret = "whsec-test-0123456789abcdef"

type accounts []*wire.Account

func (a accounts) All() iter.Seq[*wire.Account] { return slices.Values(a) }

// Receiver modes.
const (
	up = iota
	down
	gone
)

// receiver is a webhook endpoint on 127.0.0.1 that checks each POST's
// signature and counts the events it took, by id.
type receiver struct {
	srv      *httptest.Server
	mode     atomic.Int32
	posts    atomic.Int32
	badSigs  atomic.Int32
	mu       sync.Mutex
	seen     map[string]int
	first    map[string]string // each id's first payload
	differ   int               // copies whose payload differs from the first
	received []events.Event
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{seen: map[string]int{}, first: map[string]string{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	r.posts.Add(1)
	switch r.mode.Load() {
	case down:
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	case gone:
		w.WriteHeader(http.StatusGone)
		return
	}
	body, _ := io.ReadAll(req.Body)
	if err := Verify(secret, req.Header.Get(SignatureHeader), body, time.Now()); err != nil {
		r.badSigs.Add(1)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var evs []events.Event
	if err := json.Unmarshal(body, &evs); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	for _, ev := range evs {
		raw, _ := json.Marshal(ev)
		if f, ok := r.first[ev.ID]; ok && f != string(raw) {
			r.differ++
		} else if !ok {
			r.first[ev.ID] = string(raw)
		}
		r.seen[ev.ID]++
		r.received = append(r.received, ev)
	}
	r.mu.Unlock()
}

func (r *receiver) unique() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

// rig is a real JetStream (the embedded queue's), an events producer and
// a dispatcher serving accts.
type rig struct {
	q    *queue.Queue
	prod *events.Producer
	d    *Dispatcher
	reg  *prometheus.Registry
}

func newRig(t *testing.T, accts accounts, tune func(*Config)) *rig {
	t.Helper()
	return newRigFor(t, accts, countHooks(accts), tune)
}

// newRigFor starts a dispatcher on accts, and waits for its hooks
// consumers.
func newRigFor(t *testing.T, accts Accounts, hooks int, tune func(*Config)) *rig {
	t.Helper()
	q, err := queue.Open(context.Background(), queue.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	prod, err := events.Open(context.Background(), events.Options{Conn: q.Conn(), Stream: q.Stream()})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		QueueStream: q.Stream(), BatchSize: 50, BatchWait: 20 * time.Millisecond, Timeout: 2 * time.Second,
		RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, AllowHTTP: true, LagEvery: 50 * time.Millisecond,
		AllowedDestinations: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
	}
	if tune != nil {
		tune(&cfg)
	}
	reg := prometheus.NewRegistry()
	d, err := New(context.Background(), cfg, Deps{Conn: q.Conn(), Accounts: accts, Registerer: reg, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer fcancel()
		prod.Close(fctx)
		q.Close()
	})
	r := &rig{q: q, prod: prod, d: d, reg: reg}
	waitFor(t, "the webhooks' consumers", func() bool { return r.senders() == hooks })
	return r
}

func countHooks(accts accounts) int {
	n := 0
	for _, a := range accts {
		n += len(a.Webhooks)
	}
	return n
}

func (r *rig) senders() int {
	r.d.mu.Lock()
	defer r.d.mu.Unlock()
	return len(r.d.senders)
}

func (r *rig) posted(result string) float64 {
	return testutil.ToFloat64(r.d.metrics.posts.WithLabelValues(result))
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func account(apiUser string, hooks ...wire.Webhook) *wire.Account {
	return &wire.Account{APIUser: apiUser, Webhooks: hooks}
}

// emit reports n messages of apiUser as queued and delivered.
func emit(p *events.Producer, apiUser string, from, n int) {
	for i := from; i < from+n; i++ {
		env := spool.Envelope{ID: fmt.Sprintf("%s-%04d", apiUser, i), APIUser: apiUser, To: []string{"r@example.net"}}
		p.Queued(env)
		p.Emit(events.FromResult(events.Delivered, env, deliveredResult, 1, time.Now(), time.Time{}))
	}
}

// TestSignedBatchesFilteredByAccountAndType: each webhook receives its
// account's events of the types it asked for, in signed batches, and
// nothing of another account's.
func TestSignedBatchesFilteredByAccountAndType(t *testing.T) {
	all, onlyDelivered, other := newReceiver(t), newReceiver(t), newReceiver(t)
	r := newRig(t, accounts{
		account("acme", wire.Webhook{URL: all.srv.URL, Secret: secret},
			wire.Webhook{URL: onlyDelivered.srv.URL + "/d", Events: []string{"delivered"}, Secret: secret}),
		account("globex", wire.Webhook{URL: other.srv.URL, Secret: secret}),
	}, nil)
	emit(r.prod, "acme", 0, 30)
	waitFor(t, "acme's events at both endpoints", func() bool { return all.unique() == 60 && onlyDelivered.unique() == 30 })
	emit(r.prod, "globex", 0, 1)
	waitFor(t, "globex's events", func() bool { return other.unique() == 2 })
	for _, ev := range onlyDelivered.received {
		if ev.Type != events.Delivered || ev.APIUser != "acme" {
			t.Fatalf("filtered webhook got %+v", ev)
		}
	}
	for _, ev := range other.received {
		if ev.APIUser != "globex" {
			t.Fatalf("globex's webhook got %+v", ev)
		}
	}
	if n := all.badSigs.Load() + onlyDelivered.badSigs.Load() + other.badSigs.Load(); n != 0 {
		t.Fatalf("%d POSTs with a bad signature", n)
	}
	if all.posts.Load() >= 60 {
		t.Errorf("%d POSTs for 60 events: not batched", all.posts.Load())
	}
}

// TestFailuresAreRetried: an endpoint that fails is posted to again, with
// backoff, until it takes every event.
func TestFailuresAreRetried(t *testing.T) {
	rcv := newReceiver(t)
	rcv.mode.Store(down)
	r := newRig(t, accounts{account("acme", wire.Webhook{URL: rcv.srv.URL, Secret: secret})}, nil)
	emit(r.prod, "acme", 0, 10)
	waitFor(t, "a few failed POSTs", func() bool { return r.posted("status") >= 20 })
	rcv.mode.Store(up)
	waitFor(t, "every event", func() bool { return rcv.unique() == 20 })
}

// Test410DisablesTheWebhook: 410 Gone disables the webhook for the fleet
// (the key-value bucket), shows in the gauge, and stops its POSTs; the
// other account's webhook goes on.
func Test410DisablesTheWebhook(t *testing.T) {
	goneRcv, other := newReceiver(t), newReceiver(t)
	goneRcv.mode.Store(gone)
	r := newRig(t, accounts{
		account("acme", wire.Webhook{URL: goneRcv.srv.URL, Secret: secret}),
		account("globex", wire.Webhook{URL: other.srv.URL, Secret: secret}),
	}, nil)
	emit(r.prod, "acme", 0, 1)
	waitFor(t, "the webhook disabled", func() bool {
		return gaugeValue(t, r.reg, "mailfleet_webhooks_disabled") == 1
	})
	entry, err := r.d.disabled.kv.Get(context.Background(), hookKey("acme", goneRcv.srv.URL))
	if err != nil {
		t.Fatalf("the disabled mark is not in the bucket: %v", err)
	}
	var rec Disabled
	if json.Unmarshal(entry.Value(), &rec); rec.APIUser != "acme" || rec.Reason != "410 Gone" {
		t.Errorf("disabled record %s", entry.Value())
	}
	posts := goneRcv.posts.Load()
	emit(r.prod, "acme", 1, 5)
	emit(r.prod, "globex", 0, 5)
	waitFor(t, "the other account's events", func() bool { return other.unique() == 10 })
	if p := goneRcv.posts.Load(); p != posts {
		t.Errorf("%d POSTs to a disabled webhook", p-posts)
	}
	if err := r.d.Enable(context.Background(), "acme", goneRcv.srv.URL); err != nil {
		t.Fatal(err)
	}
	goneRcv.mode.Store(up)
	waitFor(t, "the enabled webhook's events", func() bool { return goneRcv.unique() == 12 })
}

// gaugeValue is the value of the gauge name whose labels include the
// given name, value pairs; 0 when there is none.
func gaugeValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			if hasLabels(have, labels) {
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

func hasLabels(have map[string]string, pairs []string) bool {
	for i := 0; i+1 < len(pairs); i += 2 {
		if have[pairs[i]] != pairs[i+1] {
			return false
		}
	}
	return true
}

// TestADeadEndpointHoldsBackOnlyItsOwn: while one account's endpoint
// fails every POST, another account's events arrive all the same.
func TestADeadEndpointHoldsBackOnlyItsOwn(t *testing.T) {
	dead, alive := newReceiver(t), newReceiver(t)
	dead.mode.Store(down)
	r := newRig(t, accounts{
		account("acme", wire.Webhook{URL: dead.srv.URL, Secret: secret}),
		account("globex", wire.Webhook{URL: alive.srv.URL, Secret: secret}),
	}, func(c *Config) { c.BatchSize = 10 })
	emit(r.prod, "acme", 0, 200) // more than the dead webhook's MaxAckPending
	emit(r.prod, "globex", 0, 100)
	waitFor(t, "the live endpoint's events", func() bool { return alive.unique() == 200 })
	if dead.unique() != 0 {
		t.Fatalf("the dead endpoint took %d", dead.unique())
	}
}

// TestDrill: the receiver is down for a while during a run of a few
// hundred messages; afterwards it has every event, and any copy it got
// twice carries the same id, so the receiver can drop it.
func TestDrill(t *testing.T) {
	const messages = 300
	rcv := newReceiver(t)
	r := newRig(t, accounts{account("acme", wire.Webhook{URL: rcv.srv.URL, Secret: secret})}, nil)
	emit(r.prod, "acme", 0, messages/3)
	waitFor(t, "the first third", func() bool { return rcv.unique() >= messages/3 })
	rcv.mode.Store(down)
	emit(r.prod, "acme", messages/3, messages/3)
	waitFor(t, "failed POSTs during the outage", func() bool { return r.posted("status") >= messages/3 })
	rcv.mode.Store(up)
	emit(r.prod, "acme", 2*messages/3, messages/3)
	waitFor(t, "every event", func() bool { return rcv.unique() == 2*messages })
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	dups := len(rcv.received) - len(rcv.seen)
	for id, n := range rcv.seen {
		if n > 1 {
			t.Logf("event %s received %d times (same id)", id, n)
		}
	}
	t.Logf("%d events, %d POSTs, %d duplicates", 2*messages, rcv.posts.Load(), dups)
	if rcv.differ != 0 {
		t.Errorf("%d copies differ from the first with their id", rcv.differ)
	}
	if n := testutil.ToFloat64(r.d.metrics.dropped); n != 0 {
		t.Errorf("%v events dropped", n)
	}
}

var deliveredResult = delivery.Result{Recipient: "r@example.net", Outcome: delivery.Delivered, Code: 250, Enhanced: "2.0.0", Text: "ok"}

// TestLag: the lag gauge is the age of the oldest event a webhook has not
// taken, counted under endpoint="failing" while its endpoint fails (the
// tenant's to fix; the relay's alert is on endpoint="ok"), and falls back
// to zero once the endpoint has taken everything.
func TestLag(t *testing.T) {
	rcv := newReceiver(t)
	rcv.mode.Store(down)
	r := newRig(t, accounts{account("acme", wire.Webhook{URL: rcv.srv.URL, Secret: secret})}, nil)
	lag := func(endpoint string) float64 {
		return gaugeValue(t, r.reg, "mailfleet_webhook_lag_seconds", "endpoint", endpoint)
	}
	failing := func() float64 { return gaugeValue(t, r.reg, "mailfleet_webhooks_failing") }
	emit(r.prod, "acme", 0, 5)
	waitFor(t, "a failing endpoint's lag", func() bool { return failing() == 1 && lag("failing") > 0 })
	if l := lag("ok"); l != 0 {
		t.Errorf("lag of endpoints that answer: %v while the only endpoint fails", l)
	}
	rcv.mode.Store(up)
	waitFor(t, "every event", func() bool { return rcv.unique() == 10 })
	waitFor(t, "no lag", func() bool { return lag("failing") == 0 && lag("ok") == 0 && failing() == 0 })
}

// TestDeletedConsumerIsMadeAgain: a webhook whose consumer was deleted
// gets one again and goes on receiving events.
func TestDeletedConsumerIsMadeAgain(t *testing.T) {
	rcv := newReceiver(t)
	r := newRig(t, accounts{account("acme", wire.Webhook{URL: rcv.srv.URL, Secret: secret})}, nil)
	key := hookKey("acme", rcv.srv.URL)
	if err := r.d.stream.DeleteConsumer(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the consumer made again", func() bool {
		_, err := r.d.stream.Consumer(context.Background(), key)
		return err == nil
	})
	emit(r.prod, "acme", 0, 3)
	waitFor(t, "the events", func() bool { return rcv.unique() == 6 })
}

// testLog shows the dispatcher's warnings with the test's output.
func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// switchable is accounts a test changes while the dispatcher reads them.
type switchable struct {
	mu   sync.Mutex
	list accounts
}

func (s *switchable) All() iter.Seq[*wire.Account] {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Values(slices.Clone(s.list))
}

func (s *switchable) set(list accounts) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.list = list
}

// TestRemovedWebhookForgetsItsDisabledMark: the way back after a 410 is to
// take the webhook out of the account and put it back: its mark is removed
// with it, and once back it is posted to again.
func TestRemovedWebhookForgetsItsDisabledMark(t *testing.T) {
	rcv := newReceiver(t)
	rcv.mode.Store(gone)
	withHook := accounts{account("acme", wire.Webhook{URL: rcv.srv.URL, Secret: secret})}
	accts := &switchable{list: withHook}
	r := newRigFor(t, accts, 1, nil)
	emit(r.prod, "acme", 0, 1)
	waitFor(t, "the webhook disabled", func() bool { return gaugeValue(t, r.reg, "mailfleet_webhooks_disabled") == 1 })
	accts.set(accounts{account("acme")})
	waitFor(t, "the mark forgotten", func() bool { return gaugeValue(t, r.reg, "mailfleet_webhooks_disabled") == 0 })
	rcv.mode.Store(up)
	accts.set(withHook)
	emit(r.prod, "acme", 1, 1)
	waitFor(t, "an event posted to the webhook added back", func() bool { return rcv.unique() > 0 })
}

// TestAMissedRemovalForgetsTheMarkAllTheSame: a pod that never saw the
// webhook leave its account (it started after the removal, or the webhook
// left and came back between two of its looks) forgets the mark once it
// sees the account without the webhook. A suspended account's marks stay:
// its webhooks are only paused.
func TestAMissedRemovalForgetsTheMarkAllTheSame(t *testing.T) {
	suspended := account("globex", wire.Webhook{URL: "https://hooks.globex.example/gone", Secret: secret})
	suspended.Suspended = true
	r := newRigFor(t, accounts{account("acme"), suspended}, 0, nil)
	ctx := context.Background()
	mark := Disabled{DisabledAt: time.Now().UTC(), Reason: "410 Gone"}
	keep, forget := hookKey("globex", "https://hooks.globex.example/gone"), hookKey("acme", "https://hooks.acme.example/removed")
	mark.APIUser = "globex"
	if err := r.d.disabled.put(ctx, keep, mark); err != nil {
		t.Fatal(err)
	}
	mark.APIUser = "acme"
	if err := r.d.disabled.put(ctx, forget, mark); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the removed webhook's mark forgotten", func() bool {
		_, err := r.d.disabled.kv.Get(ctx, forget)
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
	if _, err := r.d.disabled.kv.Get(ctx, keep); err != nil {
		t.Errorf("the suspended account's mark: %v", err)
	}
}
