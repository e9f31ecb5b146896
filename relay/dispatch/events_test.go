package dispatch

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/events"
	"github.com/mailfleet/mailfleet/relay/queue"
)

// withEvents gives a harness's dispatcher a real producer on its queue's
// JetStream, and returns a way to read what the events stream holds.
func withEvents(t *testing.T, p **events.Producer) func(*Deps) {
	return func(d *Deps) {
		q := d.Queue.(*queue.Queue)
		prod, err := events.Open(context.Background(), events.Options{Conn: q.Conn(), Stream: q.Stream(), Registerer: d.Registerer})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			prod.Close(ctx)
		})
		d.Events, *p = prod, prod
	}
}

// storedEvents reads every event in the events stream, by recipient and type.
func storedEvents(t *testing.T, q *queue.Queue) map[string]events.Event {
	t.Helper()
	js, _ := jetstream.New(q.Conn())
	ctx := context.Background()
	s, err := js.Stream(ctx, wire.EventsStream(q.Stream()))
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]events.Event{}
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var ev events.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatal(err)
		}
		if m.Header.Get(jetstream.MsgIDHeader) != ev.ID {
			t.Errorf("event %s stored with Nats-Msg-Id %q", ev.ID, m.Header.Get(jetstream.MsgIDHeader))
		}
		out[ev.Recipient+" "+string(ev.Type)] = ev
	}
	return out
}

// TestOutcomesBecomeEvents: each recipient's outcome is an event in the
// stream, with its reply; a deferral says when it is tried again, a bounce
// carries the status its notification reports. No event holds the body.
func TestOutcomesBecomeEvents(t *testing.T) {
	var prod *events.Producer
	h := start(t, Config{}, withEvents(t, &prod))
	h.submit(t, env("mixed", "sender@acme.example", "a@ok.example", "b@temp.example", "c@perm.example"), "Subject: x\r\n\r\nsecret body\r\n")
	has := func(key string) func() bool {
		return func() bool { _, ok := storedEvents(t, h.q)[key]; return ok }
	}
	waitFor(t, "the deferral", 10*time.Second, has("b@temp.example deferred"))
	h.transport.recovered.Store(true)
	waitFor(t, "the retry's event", 10*time.Second, has("b@temp.example delivered"))

	evs := storedEvents(t, h.q)
	a, b, c, b2 := evs["a@ok.example delivered"], evs["b@temp.example deferred"], evs["c@perm.example bounced"], evs["b@temp.example delivered"]
	if a.Reply == nil || a.Reply.Code != 250 || a.Attempt != 1 || a.QueueID != "mixed" || a.APIUser != "acme" || a.LabelID != "1001" {
		t.Errorf("delivered event %+v", a)
	}
	if b.NextAttempt == nil || b.Reply == nil || b.Reply.Code != 451 || !b.NextAttempt.After(b.Timestamp) {
		t.Errorf("deferred event %+v", b)
	}
	if c.DSNStatus != "5.1.1" || c.Reply == nil || c.Reply.Text != "no such user" {
		t.Errorf("bounced event %+v", c)
	}
	if b2.Attempt != 2 || b2.ID == b.ID {
		t.Errorf("the retry's event %+v", b2)
	}
	for k, ev := range evs {
		raw, _ := json.Marshal(ev)
		if strings.Contains(string(raw), "secret body") || !strings.Contains(string(raw), `"customArgs":{}`) {
			t.Errorf("event %s: %s", k, raw)
		}
	}
}

// TestExpiryIsAnEvent: a message past its lifetime reports expired, with
// the status of delivery time expired.
func TestExpiryIsAnEvent(t *testing.T) {
	var prod *events.Producer
	h := start(t, Config{}, withEvents(t, &prod))
	old := env("old", "sender@acme.example", "b@temp.example")
	old.ReceivedAt = time.Now().Add(-6 * 24 * time.Hour)
	h.submit(t, old, "Subject: old\r\n\r\n")
	waitFor(t, "the expired event", 10*time.Second, func() bool {
		_, ok := storedEvents(t, h.q)["b@temp.example expired"]
		return ok
	})
	// The bounce to the sender is a message of the relay's own, with
	// events of its own under its own queue id.
	if ev := storedEvents(t, h.q)["b@temp.example expired"]; ev.DSNStatus != "5.4.7" {
		t.Errorf("expired event %+v", ev)
	}
}

// TestEventsStreamOutageHoldsNoMessage: while the events stream refuses
// writes (full, discarding new), messages are delivered and leave the
// queue all the same; their events wait in memory and are written once
// the stream takes them again.
func TestEventsStreamOutageHoldsNoMessage(t *testing.T) {
	var prod *events.Producer
	h := start(t, Config{}, withEvents(t, &prod))
	js, _ := jetstream.New(h.q.Conn())
	ctx := context.Background()
	cfg := events.StreamConfig(h.q.Stream(), 1, events.DefaultMaxAge, events.DefaultMaxBytes)
	full := cfg
	full.MaxMsgs, full.Discard = 1, jetstream.DiscardNew
	h.submit(t, env("first", "s@acme.example", "first@ok.example"), "x")
	waitFor(t, "the first event", 10*time.Second, func() bool { return len(storedEvents(t, h.q)) == 1 })
	if _, err := js.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	const messages = 20
	for i := range messages {
		h.submit(t, env(fmt.Sprintf("m%d", i), "s@acme.example", fmt.Sprintf("r%d@ok.example", i)), "x")
	}
	waitFor(t, "every message delivered and gone", 10*time.Second, func() bool {
		return h.deliveries("delivered") == messages+1 && depth(t, h.q) == 0
	})
	buffered := testutil.ToFloat64(metricVec(t, h.reg, "mailfleet_events_buffered"))
	if buffered != messages {
		t.Fatalf("%v events buffered during the outage, want %d", buffered, messages)
	}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the buffered events written", 30*time.Second, func() bool { return len(storedEvents(t, h.q)) == messages+1 })
	if d := testutil.ToFloat64(metricVec(t, h.reg, "mailfleet_events_dropped_total")); d != 0 {
		t.Errorf("%v events dropped", d)
	}
}
