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

// TestUpgradedStreamKeepsItsFormat: on a stream a relay of an earlier
// release made (no mark), whose relays may still run beside this one in a
// rolling upgrade, nothing is held or referenced: a large record is
// published alone to <prefix>.q as before, and the earlier splitter's
// consumer keeps its configuration.
func TestUpgradedStreamKeepsItsFormat(t *testing.T) {
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
	split := wire.DefaultStream + olderSplitConsumer
	if _, err := s.CreateOrUpdateConsumer(context.Background(), jetstream.ConsumerConfig{Durable: split,
		FilterSubject: subj.In, AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	q, err := Open(context.Background(), Options{URL: url, Replicas: 1,
		Registerer: prometheus.NewRegistry(), Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("open a queue an older relay made: %v", err)
	}
	t.Cleanup(func() { q.Close() })
	body := randomBody(t, 100_000)
	commit(t, q, envelope("upgraded", "a@x.example"), body, 16<<10)
	if queued, held := subjectCount(t, q, q.subjQ), subjectCount(t, q, q.subjHeld); queued != 1 || held != 0 {
		t.Fatalf("after Commit: %d on %s, %d held packs; want the record alone on %s", queued, q.subjQ, held, q.subjQ)
	}
	p := next(t, q, 10*time.Second)
	if p.(*pending).meta.Pack != nil || !bytes.Equal(readBody(t, p), body) {
		t.Fatal("referenced, or the body differs")
	}
	if err := p.Done(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, err := s.Consumer(context.Background(), split)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := c.CachedInfo().Config; cfg.FilterSubject != subj.In || len(cfg.FilterSubjects) > 0 {
		t.Fatalf("the earlier splitter's consumer now filters %q %v", cfg.FilterSubject, cfg.FilterSubjects)
	}
	if _, err := s.Consumer(context.Background(), wire.DefaultStream+packsConsumer); err == nil {
		t.Fatal("a consumer for held packs was made on a stream that does not hold")
	}
	waitEmpty(t, q, "after Done")
}

// TestDowngradeStopsHolding: a relay of an earlier release starting on a
// stream this release made updates it without the mark and without direct
// gets. A held message committed before is still delivered (its pack read
// from the leader); from then on large records are published alone.
func TestDowngradeStopsHolding(t *testing.T) {
	url := natstest.Start(t)
	js := directJetStream(t, url)
	q, err := Open(context.Background(), Options{URL: url, Replicas: 1,
		Registerer: prometheus.NewRegistry(), Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	before := randomBody(t, 100_000)
	commit(t, q, envelope("before", "a@x.example"), before, 16<<10)
	waitSplit(t, q, 1)

	cfg := q.stream.CachedInfo().Config
	cfg.Metadata, cfg.AllowDirect = nil, false
	if _, err := js.UpdateStream(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for q.hold.Load() {
		if time.Now().After(deadline) {
			t.Fatal("still holding after the mark went")
		}
		time.Sleep(50 * time.Millisecond)
	}
	p := next(t, q, 10*time.Second)
	if p.(*pending).meta.Pack == nil || !bytes.Equal(readBody(t, p), before) {
		t.Fatal("the message held before was not delivered from its pack")
	}
	if err := p.Done(context.Background()); err != nil {
		t.Fatal(err)
	}
	after := randomBody(t, 100_000)
	commit(t, q, envelope("after", "a@x.example"), after, 16<<10)
	p = next(t, q, 10*time.Second)
	if p.(*pending).meta.Pack != nil || !bytes.Equal(readBody(t, p), after) {
		t.Fatal("held after the mark went, or the body differs")
	}
	if err := p.Done(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitEmpty(t, q, "after Done")
}
