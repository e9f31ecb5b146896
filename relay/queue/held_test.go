package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/internal/natstest"
)

// waitSplit waits until the splitter has put n messages on <prefix>.q.
func waitSplit(t *testing.T, q *Queue, n uint64) {
	t.Helper()
	waitSubjectCount(t, q, q.subjQ, n)
}

// TestHeldCopyWithoutItsPackIsDropped: a copy handed out again after its
// held pack was purged (the pack goes only once every message naming it is
// done, so the copy was delivered before a crash) is dropped and counted,
// not delivered and not retried forever.
func TestHeldCopyWithoutItsPackIsDropped(t *testing.T) {
	dir := t.TempDir()
	q := openQueue(t, dir, nil)
	commit(t, q, envelope("gone", "a@x.example"), randomBody(t, 100_000), 16<<10)
	waitSplit(t, q, 1)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	q = openQueue(t, dir, func(o *Options) { o.Registerer = reg })
	if err := q.stream.Purge(context.Background(), jetstream.WithPurgeSubject(q.subjHeld)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if p, err := q.Next(ctx); err == nil {
		t.Fatalf("message %s delivered without its pack", p.Envelope().ID)
	}
	if got := testutil.ToFloat64(q.metrics.stale); got != 1 {
		t.Fatalf("stale copies counted: %v, want 1", got)
	}
	waitEmpty(t, q, "after the stale copy")
}

// TestHeldReferenceMustNameItsOwnRecord: a reference on <prefix>.q whose
// pack holds another message at that offset (a damaged or forged record) is
// dropped; that other message's body never reaches this one's recipients.
func TestHeldReferenceMustNameItsOwnRecord(t *testing.T) {
	q := openQueue(t, t.TempDir(), nil)
	secret := randomBody(t, 100_000)
	commit(t, q, envelope("victim", "owner@x.example"), secret, 16<<10)
	p := next(t, q, 10*time.Second)
	ref := p.(*pending).meta.Pack
	forged, err := encodeRecord(meta{Envelope: envelope("forged", "thief@y.example"), Size: int64(len(secret)), Pack: ref}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The last one names the reference's own stream message, not a pack.
	for i, offset := range []int{ref.Offset, ref.Offset + 1, -4, 1 << 30, 0} {
		bad := *ref
		bad.Offset = offset
		if i == 4 {
			bad.Seq = p.(*pending).seq
		}
		r, _ := encodeRecord(meta{Envelope: envelope("forged", "thief@y.example"), Size: int64(len(secret)), Pack: &bad}, nil)
		if offset == ref.Offset {
			r = forged
		}
		if _, err := q.js.PublishMsg(context.Background(), &nats.Msg{Subject: q.subjQ, Data: r}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if got, err := q.Next(ctx); err == nil {
		t.Fatalf("forged reference delivered as %s to %v", got.Envelope().ID, got.Envelope().To)
	}
	if err := p.Done(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitEmpty(t, q, "after the forged references")
}

// TestLargeEnvelopeWithBodyInPartsIsCopied: a record large for its
// envelope alone (a thousand recipients) whose body is in parts has no body
// to hold; it is copied out of its pack and delivered, not referenced.
func TestLargeEnvelopeWithBodyInPartsIsCopied(t *testing.T) {
	q := openQueue(t, t.TempDir(), nil)
	to := make([]string, 1000)
	for i := range to {
		to[i] = fmt.Sprintf("recipient-number-%04d@a-longish-domain.example", i)
	}
	body := randomBody(t, maxPartSize+1)
	commit(t, q, envelope("many-recipients", to...), body, 64<<10)
	p := next(t, q, 10*time.Second)
	if pm := p.(*pending); pm.meta.Pack != nil || pm.meta.Parts == 0 || len(p.Envelope().To) != 1000 {
		t.Fatalf("pack %v, parts %d, %d recipients", pm.meta.Pack, pm.meta.Parts, len(p.Envelope().To))
	}
	if !bytes.Equal(readBody(t, p), body) {
		t.Fatal("body differs")
	}
	if err := p.Done(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitEmpty(t, q, "after Done")
}

// TestCachedPackNotTheStreamsIsReadAgain: when the copy of a pack read
// before does not hold the referenced message (a stream deleted and made
// again starts its sequences over), the leader's copy decides, and the
// message is delivered with its own body.
func TestCachedPackNotTheStreamsIsReadAgain(t *testing.T) {
	q := openQueue(t, t.TempDir(), nil)
	body := randomBody(t, 100_000)
	commit(t, q, envelope("mine", "a@x.example"), body, 16<<10)
	waitSplit(t, q, 1)
	last, found, err := q.leaderGet(context.Background(), 0, q.subjHeld)
	if err != nil || !found {
		t.Fatalf("held pack: %v %v", found, err)
	}
	other, _ := encodeRecord(meta{Envelope: envelope("someone-else", "b@y.example"), Size: 100_000}, randomBody(t, 100_000))
	stale := &cachedPack{ready: make(chan struct{}), data: appendPacked(nil, other)}
	close(stale.ready)
	q.packs.mu.Lock()
	q.packs.packs[last.Seq], q.packs.order = stale, append(q.packs.order, last.Seq)
	q.packs.mu.Unlock()
	p := next(t, q, 10*time.Second)
	if p.Envelope().ID != "mine" || !bytes.Equal(readBody(t, p), body) {
		t.Fatalf("delivered %s, or its body differs", p.Envelope().ID)
	}
	if err := p.Done(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestHeldFloor walks reap's marks: a held pack is purged only once the
// delivery ack floor reaches the last queued message seen after the split
// floor that covers it.
func TestHeldFloor(t *testing.T) {
	q := &Queue{}
	steps := []struct {
		mark            heldMark
		deliverFloor    uint64
		want            uint64
		marksAfterwards int
	}{
		{heldMark{splitFloor: 10, lastQueued: 20}, 15, 0, 1},  // refs up to 20 not all done
		{heldMark{splitFloor: 30, lastQueued: 40}, 19, 0, 2},  // still not
		{heldMark{splitFloor: 30, lastQueued: 45}, 20, 10, 1}, // first mark done; same split floor adds no mark
		{heldMark{splitFloor: 50, lastQueued: 60}, 100, 50, 0},
		{heldMark{splitFloor: 50, lastQueued: 100}, 100, 50, 0}, // purged already: purgeTo skips it
	}
	for i, s := range steps {
		if got := q.heldFloor(s.mark, s.deliverFloor); got != s.want || len(q.marks) != s.marksAfterwards {
			t.Fatalf("step %d: floor %d with %d marks left, want %d with %d", i, got, len(q.marks), s.want, s.marksAfterwards)
		}
	}
	// Delivery standing still: the marks stay bounded, and each one kept
	// is still a true pair, so what is purged later is never too much.
	for i := range uint64(10_000) {
		q.heldFloor(heldMark{splitFloor: 100 + i, lastQueued: 200 + i}, 150)
	}
	if len(q.marks) > maxHeldMarks {
		t.Fatalf("%d marks kept", len(q.marks))
	}
	if got := q.heldFloor(heldMark{splitFloor: 20_000, lastQueued: 30_000}, 5_000); got == 0 || got+100 > 5_000 {
		t.Fatalf("floor %d once delivery reached 5,000: want a split floor whose queued messages end at or below 5,000", got)
	}
}

// TestPackCacheSharesOneRead: workers asking for one pack at once read it
// once; a failed read is not kept; the cache stays within its bound.
func TestPackCacheSharesOneRead(t *testing.T) {
	c := newPackCache(3 << 20)
	reads := map[uint64]int{}
	release := make(chan struct{})
	read := func(_ context.Context, seq uint64) ([]byte, error) {
		reads[seq]++
		<-release
		if seq == 99 {
			return nil, errors.New("server unreachable")
		}
		return make([]byte, 1<<20), nil
	}
	done := make(chan error, 8)
	for range 8 {
		go func() { _, err := c.get(context.Background(), 1, read); done <- err }()
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if reads[1] != 1 {
		t.Fatalf("pack 1 read %d times by 8 workers", reads[1])
	}
	for range 2 {
		if _, err := c.get(context.Background(), 99, read); err == nil {
			t.Fatal("a failed read succeeded")
		}
	}
	if reads[99] != 2 {
		t.Fatalf("a failed read was kept: %d reads for 2 asks", reads[99])
	}
	for seq := uint64(2); seq < 10; seq++ {
		if _, err := c.get(context.Background(), seq, read); err != nil {
			t.Fatal(err)
		}
	}
	if c.size > c.max || len(c.packs) != 3 || len(c.order) != 3 {
		t.Fatalf("cache holds %d bytes in %d packs (%d in order), bound %d", c.size, len(c.packs), len(c.order), c.max)
	}
}

// TestRollingUpgradeWritesNoReference: on a stream a relay of an earlier
// release made, whose splitter is still running, large messages are copied
// out of their packs (that relay drops references it cannot read); once its
// splitter's consumer has gone unused for the quiet period, the consumer is
// removed and large messages are held from then on.
func TestRollingUpgradeWritesNoReference(t *testing.T) {
	url := natstest.Start(t)
	js := directJetStream(t, url)
	subj := wire.SubjectsOf(wire.DefaultStream)
	s, err := js.CreateStream(context.Background(), jetstream.StreamConfig{
		Name:     wire.DefaultStream,
		Subjects: []string{subj.In, subj.Queue, subj.Sched + ".>", subj.Split + ".>"},
		Storage:  jetstream.FileStorage, AllowAtomicPublish: true, AllowMsgSchedules: true, AllowMsgTTL: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	older, err := s.CreateOrUpdateConsumer(context.Background(), jetstream.ConsumerConfig{Durable: wire.DefaultStream + olderSplitConsumer,
		FilterSubject: subj.In, AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	// The older relay's splitter, waiting for packs in short pulls.
	stopOlder := make(chan struct{})
	olderDone := make(chan struct{})
	go func() {
		defer close(olderDone)
		for {
			select {
			case <-stopOlder:
				return
			default:
			}
			if batch, err := older.Fetch(1, jetstream.FetchMaxWait(200*time.Millisecond)); err == nil {
				for m := range batch.Messages() {
					m.Ack()
				}
			}
		}
	}()
	q, err := Open(context.Background(), Options{URL: url, Replicas: 1, olderQuiet: time.Second,
		Registerer: prometheus.NewRegistry(), Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("open a queue an older relay made: %v", err)
	}
	t.Cleanup(func() { q.Close() })
	deliver := func(id string, wantRef bool) {
		t.Helper()
		body := randomBody(t, 100_000)
		commit(t, q, envelope(id, "a@x.example"), body, 16<<10)
		p := next(t, q, 10*time.Second)
		if got := p.(*pending).meta.Pack != nil; got != wantRef || !bytes.Equal(readBody(t, p), body) {
			t.Fatalf("%s: delivered from a reference %v, want %v; or the body differs", id, got, wantRef)
		}
		if err := p.Done(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	deliver("during-rollout-1", false)
	time.Sleep(2 * time.Second) // longer than the quiet period: the older splitter keeps pulling
	deliver("during-rollout-2", false)

	close(stopOlder)
	<-olderDone
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := s.Consumer(context.Background(), wire.DefaultStream+olderSplitConsumer)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the older splitter's consumer is still there: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	deliver("after-rollout", true)

	// A relay of the earlier release updating the stream at its start
	// turns direct gets off: packs are read from the leader.
	cfg := q.stream.CachedInfo().Config
	cfg.AllowDirect = false
	if _, err := js.UpdateStream(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	deliver("without-direct-gets", true)
	waitEmpty(t, q, "after Done")
}
