package queue

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/internal/natstest"
)

// directJetStream connects to the server at url beside the queue under
// test; the test closes the connection.
func directJetStream(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// subjectCount is how many messages the queue stream holds on subject,
// acknowledged or not.
func subjectCount(t *testing.T, q *Queue, subject string) uint64 {
	t.Helper()
	info, err := q.stream.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[subject]
}

// waitSubjectCount waits until the stream holds want messages on subject.
// reap runs every second; a deadline of many seconds only bounds a failure.
func waitSubjectCount(t *testing.T, q *Queue, subject string, want uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := subjectCount(t, q, subject)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %d messages, want %d", subject, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAcknowledgedMessagesArePurged: the stream keeps what Done
// acknowledged only until reap purges it, and never purges a message still
// being delivered, nor anything after it (the ack floor stops there).
func TestAcknowledgedMessagesArePurged(t *testing.T) {
	q := openQueue(t, t.TempDir(), nil)
	const n = 20
	for i := range n {
		commit(t, q, envelope(fmt.Sprintf("p%d", i), "a@x.example"), []byte("body"), 4)
	}
	held := next(t, q, 10*time.Second)
	for range n - 1 {
		if err := next(t, q, 10*time.Second).Done(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// The packs were split and acknowledged: purged. The messages after
	// the held one were acknowledged but wait above the ack floor.
	waitSubjectCount(t, q, q.subjIn, 0)
	if got := subjectCount(t, q, q.subjQ); got != n {
		t.Fatalf("with the first message still held, %s holds %d messages, want all %d", q.subjQ, got, n)
	}
	if d, err := q.Depth(context.Background()); err != nil || d != 1 {
		t.Fatalf("depth %d (%v), want 1: only the held message", d, err)
	}
	if got := string(readBody(t, held)); got != "body" {
		t.Fatalf("held message reads %q", got)
	}
	if err := held.Done(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitSubjectCount(t, q, q.subjQ, 0)
	waitEmpty(t, q, "after every message is done")
}

// TestOlderWorkQueueStreamIsKept: a stream an older relay made with
// work-queue retention cannot be changed to limits (the server refuses);
// the relay opens it as it is and delivers from it.
func TestOlderWorkQueueStreamIsKept(t *testing.T) {
	url := natstest.Start(t)
	js := directJetStream(t, url)
	subj := wire.SubjectsOf(wire.DefaultStream)
	_, err := js.CreateStream(context.Background(), jetstream.StreamConfig{
		Name:      wire.DefaultStream,
		Subjects:  []string{subj.In, subj.Queue, subj.Sched + ".>", subj.Split + ".>"},
		Retention: jetstream.WorkQueuePolicy,
		Storage:   jetstream.FileStorage,
	})
	if err != nil {
		t.Fatal(err)
	}
	q, err := Open(context.Background(), Options{URL: url, Replicas: 1,
		Registerer: prometheus.NewRegistry(), Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("open a queue on an older work-queue stream: %v", err)
	}
	t.Cleanup(func() { q.Close() })
	if r := q.stream.CachedInfo().Config.Retention; r != jetstream.WorkQueuePolicy {
		t.Fatalf("retention %v, want the stream's own work-queue retention", r)
	}
	// A large message is not held in a pack: the work-queue stream
	// removes a pack when the splitter acknowledges it.
	want := map[string][]byte{"old-1": []byte("body"), "old-2": randomBody(t, 100_000)}
	commit(t, q, envelope("old-1", "a@x.example"), want["old-1"], 4)
	commit(t, q, envelope("old-2", "a@x.example"), want["old-2"], 16<<10)
	for range want {
		p := next(t, q, 10*time.Second)
		if p.(*pending).meta.Pack != nil || !bytes.Equal(readBody(t, p), want[p.Envelope().ID]) {
			t.Fatalf("%s: pack %v, or its body differs", p.Envelope().ID, p.(*pending).meta.Pack)
		}
		if err := p.Done(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	waitEmpty(t, q, "after the messages are done")
}
