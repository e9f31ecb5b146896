package events

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/queue"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// open starts an embedded queue (a real JetStream) and a producer beside it.
func open(t *testing.T, buffer int) (*Producer, jetstream.JetStream, *prometheus.Registry) {
	t.Helper()
	q, err := queue.Open(context.Background(), queue.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	p, err := Open(context.Background(), Options{Conn: q.Conn(), Stream: q.Stream(), Buffer: buffer, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Close(ctx)
		q.Close()
	})
	js, _ := jetstream.New(q.Conn())
	return p, js, reg
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func stored(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), wire.EventsStream(wire.DefaultStream))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func envelope(id string, n int) spool.Envelope {
	env := spool.Envelope{ID: id, APIUser: "acme.co", LabelID: "7", From: "a@acme.example", ReceivedAt: time.Now()}
	for i := range n {
		env.To = append(env.To, fmt.Sprintf("r%d@example.net", i))
	}
	return env
}

// TestReportedTwiceStoredOnce: the same outcome reported again (after a
// crash) has the same id, and the stream keeps one copy.
func TestReportedTwiceStoredOnce(t *testing.T) {
	p, js, _ := open(t, 0)
	env := envelope("q1", 50)
	p.Queued(env)
	p.Queued(env)
	waitFor(t, "both reports written", func() bool { return testutil.ToFloat64(p.metrics.produced.WithLabelValues("queued")) == 100 })
	if n := stored(t, js); n != 50 {
		t.Fatalf("%d events stored, want one per recipient", n)
	}
	s, _ := js.Stream(context.Background(), wire.EventsStream(wire.DefaultStream))
	m, err := s.GetLastMsgForSubject(context.Background(), "mailfleet.events.queued.u"+hex.EncodeToString([]byte("acme.co")))
	if err != nil {
		t.Fatalf("events are stored under <prefix>.events.<type>.u<hex of api_user>: %v", err)
	}
	if m.Header.Get(jetstream.MsgIDHeader) != NewID("q1", Queued, "r49@example.net", 0) {
		t.Errorf("Nats-Msg-Id %q", m.Header.Get(jetstream.MsgIDHeader))
	}
}

// TestDeletedStreamIsMadeAgain: events written while the stream is gone
// wait, and are written once the producer made it again.
func TestDeletedStreamIsMadeAgain(t *testing.T) {
	p, js, _ := open(t, 0)
	if err := js.DeleteStream(context.Background(), wire.EventsStream(wire.DefaultStream)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p.Queued(envelope("q2", 10))
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Emit waited %v", d)
	}
	waitFor(t, "the events in a stream made again", func() bool { return stored(t, js) == 10 })
}

// TestFullBufferDrops: while the stream refuses writes, events fill the
// buffer; past it they are dropped and counted, never waited for. Those
// buffered are written once the stream takes them again.
func TestFullBufferDrops(t *testing.T) {
	p, js, reg := open(t, 10)
	cfg := StreamConfig(wire.DefaultStream, 1, DefaultMaxAge, DefaultMaxBytes)
	full := cfg
	full.MaxMsgs, full.Discard = 1, jetstream.DiscardNew
	p.Queued(envelope("first", 1))
	waitFor(t, "the first event", func() bool { return stored(t, js) == 1 })
	if _, err := js.UpdateStream(context.Background(), full); err != nil {
		t.Fatal(err)
	}
	const total = 200
	p.Queued(envelope("q3", total))
	dropped := testutil.ToFloat64(p.metrics.dropped.WithLabelValues("buffer_full"))
	if dropped == 0 || dropped > total-10 {
		t.Fatalf("%v dropped of %d with a buffer of 10", dropped, total)
	}
	if _, err := js.UpdateStream(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the buffered events written", func() bool {
		return testutil.ToFloat64(p.metrics.produced.WithLabelValues("queued")) == 1+total-dropped
	})
	if n := stored(t, js); float64(n) != 1+total-dropped {
		t.Errorf("%d stored, %v dropped of %d", n, dropped, total)
	}
	if n, _ := testutil.GatherAndCount(reg, "mailfleet_events_dropped_total"); n != 1 {
		t.Errorf("%d drop series, want only buffer_full", n)
	}
}

// TestCloseFlushesOrCounts: Close writes what is buffered; a producer
// whose stream refuses counts what it could not write as dropped at
// shutdown, when the grace period ends.
func TestCloseFlushesOrCounts(t *testing.T) {
	p, js, _ := open(t, 0)
	full := StreamConfig(wire.DefaultStream, 1, DefaultMaxAge, DefaultMaxBytes)
	full.MaxMsgs, full.Discard = 1, jetstream.DiscardNew
	p.Queued(envelope("first", 1))
	waitFor(t, "the first event", func() bool { return stored(t, js) == 1 })
	if _, err := js.UpdateStream(context.Background(), full); err != nil {
		t.Fatal(err)
	}
	p.Queued(envelope("q4", 5))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	p.Close(ctx)
	if d := testutil.ToFloat64(p.metrics.dropped.WithLabelValues("shutdown")); d != 5 {
		t.Errorf("%v dropped at shutdown, want 5", d)
	}
	p.Queued(envelope("late", 1))
	if d := testutil.ToFloat64(p.metrics.dropped.WithLabelValues("closed")); d != 1 {
		t.Errorf("%v dropped after Close, want 1", d)
	}
}

// TestDottedAPIUsersDoNotBlockOthers: api_users the id pattern allows
// with a trailing or doubled dot are stored, and so are the events of
// other accounts behind them. Written into the subject as they are, they
// made an empty token that no stream takes, and the producer retried the
// first such event forever: no account's events were written again.
func TestDottedAPIUsersDoNotBlockOthers(t *testing.T) {
	p, js, _ := open(t, 0)
	for i, user := range []string{"acme.", "a..b", ".", "other"} {
		env := envelope(fmt.Sprintf("q%d", i), 1)
		env.APIUser = user
		p.Queued(env)
	}
	waitFor(t, "every account's event stored", func() bool { return stored(t, js) == 4 })
}

// TestStreamBoundedInBytes: the events stream has a size of its own and
// drops its oldest events past it, so that events never fill the storage
// the queue's mail needs.
func TestStreamBoundedInBytes(t *testing.T) {
	_, js, _ := open(t, 0)
	s, err := js.Stream(context.Background(), wire.EventsStream(wire.DefaultStream))
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.MaxBytes != DefaultMaxBytes || info.Config.Discard != jetstream.DiscardOld {
		t.Fatalf("events stream: max bytes %d, discard %v", info.Config.MaxBytes, info.Config.Discard)
	}
}

// TestOpenWithoutItsStream: a relay whose events stream cannot be made
// (here another stream holds its subjects) still starts — mail matters
// more than its events — and writes the events once the stream can be
// made.
func TestOpenWithoutItsStream(t *testing.T) {
	q, err := queue.Open(context.Background(), queue.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	js, _ := jetstream.New(q.Conn())
	squat := jetstream.StreamConfig{Name: "SQUAT", Subjects: []string{wire.SubjectsOf(q.Stream()).Events + ".>"}}
	if _, err := js.CreateStream(context.Background(), squat); err != nil {
		t.Fatal(err)
	}
	p, err := Open(context.Background(), Options{Conn: q.Conn(), Stream: q.Stream(), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatalf("Open refused to start without its stream: %v", err)
	}
	defer p.Close(context.Background())
	if err := js.DeleteStream(context.Background(), "SQUAT"); err != nil {
		t.Fatal(err)
	}
	p.Queued(envelope("q5", 3))
	waitFor(t, "the events in the stream made once it could be", func() bool { return stored(t, js) == 3 })
}
