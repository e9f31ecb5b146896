package queue

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/mailfleet/mailfleet/relay/spool"
)

// openQueue opens an embedded queue in dir; the test closes it.
func openQueue(t *testing.T, dir string, tune func(*Options)) *Queue {
	t.Helper()
	o := Options{Dir: dir, AckWait: 30 * time.Second, Registerer: prometheus.NewRegistry(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), MetricsInterval: 100 * time.Millisecond}
	if tune != nil {
		tune(&o)
	}
	q, err := Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			q.Close()
		}
	})
	return q
}

func envelope(id string, to ...string) spool.Envelope {
	return spool.Envelope{
		ID: id, APIUser: "acme", LabelID: "1001", From: "sender@acme.example", To: to,
		ReceivedAt: time.Date(2026, 11, 28, 17, 0, 0, 123456789, time.UTC),
		RemoteAddr: "127.0.0.1:4242", Helo: "client.test", TLS: true,
	}
}

// commit writes body in pieces of chunk bytes and commits it.
func commit(t testing.TB, q *Queue, env spool.Envelope, body []byte, chunk int) {
	t.Helper()
	w, err := q.Begin(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	for b := body; len(b) > 0; {
		n := min(chunk, len(b))
		if _, err := w.Write(b[:n]); err != nil {
			t.Fatal(err)
		}
		b = b[n:]
	}
	if err := w.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func next(t testing.TB, q *Queue, within time.Duration) spool.Pending {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	p, err := q.Next(ctx)
	if err != nil {
		t.Fatalf("next message: %v", err)
	}
	return p
}

func readBody(t testing.TB, p spool.Pending) []byte {
	t.Helper()
	r, err := p.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitEmpty waits until the queue holds no message and no body part.
// Body parts are purged and acknowledged messages stop counting a moment
// after Done, so right after it the queue may still count them; what must
// not happen is that they stay.
func waitEmpty(t *testing.T, q *Queue, when string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		queued, parts := msgs(t, q)
		if queued == 0 && parts == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d queued, %d body parts left", when, queued, parts)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func randomBody(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func msgs(t *testing.T, q *Queue) (queued, bodyParts uint64) {
	t.Helper()
	depth, err := q.Depth(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	bi, err := q.bodies.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return depth, bi.State.Msgs
}

func TestRoundTripIsByteIdentical(t *testing.T) {
	q := openQueue(t, t.TempDir(), nil)
	cases := []struct {
		name  string
		size  int
		chunk int
		parts bool
	}{
		{"empty", 0, 1, false},
		{"4 KiB", 4096, 4096, false},
		{"just below a held record", heldMin - 1024, 4096, false},
		{"100 KB, held in its pack", 100_000, 16 << 10, false},
		{"one part exactly", maxPartSize, 1000, false},
		{"one byte over a part", maxPartSize + 1, 64 << 10, true},
		{"16,000,000 bytes", 16_000_000, 64 << 10, true},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := envelope(fmt.Sprintf("1764349200000_%08d.node.with.dots", i), "a@x.example", "b@y.example")
			body := randomBody(t, c.size)
			commit(t, q, env, body, c.chunk)
			p := next(t, q, 10*time.Second)
			if got := p.Envelope(); !reflect.DeepEqual(got, env) {
				t.Fatalf("envelope:\n got %+v\nwant %+v", got, env)
			}
			if p.Size() != int64(c.size) || p.Attempts() != 0 {
				t.Fatalf("size %d attempts %d", p.Size(), p.Attempts())
			}
			// Twice: a transport opens the body once per destination.
			for range 2 {
				if got := readBody(t, p); !bytes.Equal(got, body) {
					t.Fatalf("body of %d bytes came back as %d bytes, differing", len(body), len(got))
				}
			}
			if _, parts := msgs(t, q); (parts > 0) != c.parts {
				t.Fatalf("%d body parts stored", parts)
			}
			if err := p.Done(context.Background()); err != nil {
				t.Fatal(err)
			}
			waitEmpty(t, q, "after Done")
		})
	}
}

// TestLargeRecordsAreHeldInTheirPack: large records committed together
// share one pack; what goes on <prefix>.q for each is a reference of a few
// hundred bytes, and the pack stays on the stream until every message
// naming it is done, then goes.
func TestLargeRecordsAreHeldInTheirPack(t *testing.T) {
	q := openQueue(t, t.TempDir(), nil)
	want := map[string][]byte{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 8 {
		id := fmt.Sprintf("held-%d", i)
		body := randomBody(t, heldMin+i*1000)
		mu.Lock()
		want[id] = body
		mu.Unlock()
		wg.Go(func() { commit(t, q, envelope(id, "a@x.example"), body, 8<<10) })
	}
	wg.Wait()
	packs := subjectCount(t, q, q.subjHeld)
	if packs == 0 || packs > 8 || subjectCount(t, q, q.subjIn) != 0 {
		t.Fatalf("%d held packs and %d others for 8 large messages", packs, subjectCount(t, q, q.subjIn))
	}
	var held []spool.Pending
	for range len(want) {
		p := next(t, q, 10*time.Second)
		pm := p.(*pending)
		if pm.meta.Pack == nil || len(pm.msg.Data()) > 1024 {
			t.Fatalf("%s: %d bytes on %s, pack %v; want a reference", pm.meta.Envelope.ID, len(pm.msg.Data()), q.subjQ, pm.meta.Pack)
		}
		if !bytes.Equal(readBody(t, p), want[p.Envelope().ID]) {
			t.Fatalf("%s: body differs", p.Envelope().ID)
		}
		held = append(held, p)
	}
	// With one message not done the packs stay, however often reap runs.
	for _, p := range held[1:] {
		if err := p.Done(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * reapEvery)
	if got := subjectCount(t, q, q.subjHeld); got != packs {
		t.Fatalf("with a message still being delivered, %d of %d held packs left", got, packs)
	}
	if !bytes.Equal(readBody(t, held[0]), want[held[0].Envelope().ID]) {
		t.Fatal("the last message's body differs")
	}
	if err := held[0].Done(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitSubjectCount(t, q, q.subjHeld, 0)
	waitEmpty(t, q, "after Done")
}

// TestHeldRetryCarriesItsBody: a retry of a message held in its pack
// carries the body itself, so it is delivered after the pack is gone.
func TestHeldRetryCarriesItsBody(t *testing.T) {
	q := openQueue(t, t.TempDir(), nil)
	body := randomBody(t, 100_000)
	commit(t, q, envelope("retried", "a@x.example", "b@y.example"), body, 16<<10)
	p := next(t, q, 10*time.Second)
	if err := p.Retry(context.Background(), []string{"b@y.example"}, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	waitSubjectCount(t, q, q.subjHeld, 0)
	p = next(t, q, 20*time.Second)
	if pm := p.(*pending); pm.meta.Pack != nil || p.Attempts() != 1 {
		t.Fatalf("the retry names pack %v, attempts %d", pm.meta.Pack, p.Attempts())
	}
	if !bytes.Equal(readBody(t, p), body) {
		t.Fatal("the retry's body differs")
	}
	if err := p.Done(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitEmpty(t, q, "after Done")
}

// TestConcurrentCommitsArriveOnce commits from 20 writers at once, so the
// group commit packs several messages together, and takes every one out.
func TestConcurrentCommitsArriveOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	q := openQueue(t, t.TempDir(), func(o *Options) { o.Registerer = reg })
	const writers, each = 20, 25
	bodies := sync.Map{}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				id := fmt.Sprintf("id-%02d-%03d", w, i)
				body := randomBody(t, 1000+w*100+i)
				bodies.Store(id, body)
				commit(t, q, envelope(id, "rcpt@x.example"), body, 512)
			}
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for range writers * each {
		p := next(t, q, 10*time.Second)
		id := p.Envelope().ID
		want, _ := bodies.Load(id)
		if seen[id] || !bytes.Equal(readBody(t, p), want.([]byte)) {
			t.Fatalf("message %s: seen before %v, or body differs", id, seen[id])
		}
		seen[id] = true
		if err := p.Done(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := testutil.CollectAndCount(reg, "mailfleet_queue_publish_seconds"); n != 1 {
		t.Fatalf("publish histogram: %d series", n)
	}
	if got := histogramCount(t, reg, "mailfleet_queue_publish_seconds"); got != writers*each {
		t.Fatalf("publish histogram counted %d commits, want %d", got, writers*each)
	}
	if packs := histogramCount(t, reg, "mailfleet_queue_commit_messages"); packs >= writers*each {
		t.Fatalf("%d packs for %d concurrent commits: nothing was grouped", packs, writers*each)
	}
}

func histogramCount(t *testing.T, reg *prometheus.Registry, name string) int {
	t.Helper()
	return int(gathered(t, reg, name).GetSampleCount())
}

func histogramSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	return gathered(t, reg, name).GetSampleSum()
}

// gathered is the one unlabelled histogram name in reg.
func gathered(t *testing.T, reg *prometheus.Registry, name string) *dto.Histogram {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetHistogram()
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

func TestRetryKeepsOnlyRemainingRecipientsAndWaits(t *testing.T) {
	for _, size := range []int{2048, 3 * maxPartSize} {
		t.Run(fmt.Sprintf("%d bytes", size), func(t *testing.T) {
			q := openQueue(t, t.TempDir(), nil)
			env := envelope("retry-me", "a@x.example", "b@y.example", "c@z.example")
			body := randomBody(t, size)
			commit(t, q, env, body, 8192)
			p := next(t, q, 10*time.Second)
			const delay = 2 * time.Second
			retried := time.Now()
			if err := p.Retry(context.Background(), []string{"b@y.example"}, delay); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), delay/2)
			defer cancel()
			if early, err := q.Next(ctx); err == nil {
				t.Fatalf("retried message %s came back before its delay", early.Envelope().ID)
			}
			p = next(t, q, 10*time.Second)
			if waited := time.Since(retried); waited < delay {
				t.Fatalf("came back after %v, want at least %v", waited, delay)
			}
			want := env
			want.To = []string{"b@y.example"}
			if got := p.Envelope(); !reflect.DeepEqual(got, want) || p.Attempts() != 1 {
				t.Fatalf("after retry: %+v attempts %d", got, p.Attempts())
			}
			if !bytes.Equal(readBody(t, p), body) {
				t.Fatal("body changed by the retry")
			}
			if err := p.Done(context.Background()); err != nil {
				t.Fatal(err)
			}
			waitEmpty(t, q, "after Done")
		})
	}
}

// TestUnackedMessageIsRedelivered: a worker that takes a message and dies
// (here: drops it without Done, Retry or Touch) leaves it to the next.
func TestUnackedMessageIsRedelivered(t *testing.T) {
	reg := prometheus.NewRegistry()
	q := openQueue(t, t.TempDir(), func(o *Options) { o.AckWait = time.Second; o.Registerer = reg })
	commit(t, q, envelope("dies", "a@x.example"), []byte("body\r\n"), 100)
	first := next(t, q, 10*time.Second)
	// Touch keeps it away from others while the delivery goes on.
	for range 3 {
		time.Sleep(500 * time.Millisecond)
		if err := first.Touch(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	if _, err := q.Next(ctx); err == nil {
		t.Fatal("a touched message was handed out twice")
	}
	// Now the worker "dies": no more Touch, no ack.
	second := next(t, q, 5*time.Second)
	if second.Envelope().ID != "dies" || string(readBody(t, second)) != "body\r\n" {
		t.Fatalf("redelivered %+v", second.Envelope())
	}
	if got := testutil.ToFloat64(q.metrics.redeliveries); got != 1 {
		t.Fatalf("redeliveries counted: %v", got)
	}
	if err := second.Done(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestSecondOpenOfADirectoryFails(t *testing.T) {
	dir := t.TempDir()
	openQueue(t, dir, nil)
	if q, err := Open(context.Background(), Options{Dir: dir}); err == nil {
		q.Close()
		t.Fatal("opened a queue directory twice")
	}
}

func TestRestartKeepsCommittedMessages(t *testing.T) {
	dir := t.TempDir()
	q, err := Open(context.Background(), Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	first := q
	t.Cleanup(func() { first.Close() }) // a second Close does nothing harmful
	want := map[string][]byte{}
	for i := range 50 {
		id := fmt.Sprintf("keep-%02d", i)
		want[id] = randomBody(t, 100+i)
		commit(t, q, envelope(id, "a@x.example"), want[id], 64)
	}
	want["held"] = randomBody(t, heldMin+1) // delivered from its pack
	commit(t, q, envelope("held", "a@x.example"), want["held"], 32<<10)
	want["large"] = randomBody(t, 2*maxPartSize+17)
	commit(t, q, envelope("large", "a@x.example"), want["large"], 32<<10)
	next(t, q, 10*time.Second) // being delivered when the server stops
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = openQueue(t, dir, func(o *Options) { o.AckWait = time.Second })
	got := map[string]bool{}
	for len(got) < len(want) {
		p := next(t, q, 10*time.Second)
		id := p.Envelope().ID
		if !bytes.Equal(readBody(t, p), want[id]) {
			t.Fatalf("message %s differs after restart", id)
		}
		got[id] = true
		if err := p.Done(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// A pack whose split was not acknowledged before the stop is split
	// again, and every message in it is recognised as a duplicate.
	deadline := time.Now().Add(10 * time.Second)
	for {
		queued, parts := msgs(t, q)
		if queued == 0 && parts == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after all Done: %d queued, %d parts", queued, parts)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if p, err := q.Next(ctx); err == nil {
		t.Fatalf("message %s delivered twice", p.Envelope().ID)
	}
}

func TestAbortLeavesNothing(t *testing.T) {
	q := openQueue(t, t.TempDir(), nil)
	for _, size := range []int{10, 3 * maxPartSize} {
		w, err := q.Begin(context.Background(), envelope(fmt.Sprintf("abort-%d", size), "a@x.example"))
		if err != nil {
			t.Fatal(err)
		}
		w.Write(randomBody(t, size))
		if err := w.Abort(); err != nil {
			t.Fatal(err)
		}
		if err := w.Commit(context.Background()); !errors.Is(err, errFinished) {
			t.Fatalf("commit after abort: %v", err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if queued, parts := msgs(t, q); queued != 0 || parts != 0 {
		t.Fatalf("after aborts: %d queued, %d parts", queued, parts)
	}
}

func TestGauges(t *testing.T) {
	reg := prometheus.NewRegistry()
	q := openQueue(t, t.TempDir(), func(o *Options) { o.Registerer = reg })
	for i := range 3 {
		commit(t, q, envelope(fmt.Sprintf("g%d", i), "a@x.example"), []byte("x"), 1)
	}
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(q.metrics.depth) != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("depth %v, want 3", testutil.ToFloat64(q.metrics.depth))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !q.Ready() {
		t.Fatal("an open queue is not ready")
	}
	if age := testutil.ToFloat64(q.metrics.oldest); age < 0 || age > 60 {
		t.Fatalf("oldest age %v", age)
	}
	names := []string{}
	families, _ := reg.Gather()
	for _, f := range families {
		names = append(names, f.GetName())
	}
	for _, want := range []string{"mailfleet_queue_depth", "mailfleet_queue_oldest_age_seconds", "mailfleet_queue_publish_seconds"} {
		if !slices.Contains(names, want) {
			t.Fatalf("metric %s missing from %v", want, names)
		}
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://user:secret@nats:4222": "nats://[redacted]@nats:4222",
		"tls://nats.example:4222":      "tls://nats.example:4222",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestCommitsRacingCloseAllReturn: every commit made while the queue
// closes gets an answer, stored or "queue closed", without its caller's
// context ending. One that entered the committer's buffer after its last
// look waited for its context: forever, for a caller without a deadline.
func TestCommitsRacingCloseAllReturn(t *testing.T) {
	for round := range 20 {
		q := openQueue(t, t.TempDir(), nil)
		var wg sync.WaitGroup
		for i := range 32 {
			wg.Go(func() {
				w, err := q.Begin(context.Background(), envelope(fmt.Sprintf("r%d-%d", round, i), "rcpt@x.example"))
				if err != nil {
					return // closed already
				}
				if _, err := w.Write([]byte("Subject: racing\r\n\r\nbody\r\n")); err != nil {
					return
				}
				w.Commit(context.Background())
			})
		}
		q.Close()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: commits made while the queue closed still wait for an answer", round)
		}
	}
}

// TestSettled: a committed message keeps the queue unsettled from the
// moment its commit returns until it is finished, whatever the consumers'
// counters say yet, and the queue settles once it is finished (the server updates those after acknowledging the
// publish, which let a test harness read an empty queue with a message
// just queued).
func TestSettled(t *testing.T) {
	q := openQueue(t, t.TempDir(), nil)
	settled := func() bool {
		ok, err := q.Settled(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !settled() {
		t.Fatal("an empty queue is not settled")
	}
	for i := range 20 {
		commit(t, q, envelope(fmt.Sprintf("s%d", i), "a@x.example"), []byte("body"), 4)
		if settled() {
			t.Fatalf("settled right after commit %d", i)
		}
		p := next(t, q, 10*time.Second)
		if settled() {
			t.Fatalf("settled while message %d is being delivered", i)
		}
		if err := p.Done(context.Background()); err != nil {
			t.Fatal(err)
		}
		// The splitter acknowledges the pack after it published the pack's
		// messages, so it may still hold the pack for a moment after the
		// message itself is finished: unsettled, then settled, never the
		// other way round.
		deadline := time.Now().Add(10 * time.Second)
		for !settled() {
			if time.Now().After(deadline) {
				t.Fatalf("not settled 10 s after message %d is done", i)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}
