package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The splitter's durable consumer, after the stream's name. Relays of
// earlier releases split with olderSplitConsumer, which reads <prefix>.in
// alone; this release's reads held packs too, under a name of its own, so
// that one that goes on being used says a relay of an earlier release is
// still running.
const (
	packsConsumer      = "_packs"
	olderSplitConsumer = "_split"
)

// olderSplitterQuiet is how long the older splitter's consumer must go
// unused before this relay takes it that no relay of an earlier release
// runs on the stream. Until then no reference is put on <prefix>.q: such a
// relay cannot read one and would drop it as unreadable. Held packs are
// copied out meanwhile, as before. During a rolling upgrade both splitters
// split <prefix>.in, and the server's duplicate detection stores each
// message once.
const olderSplitterQuiet = 2 * time.Minute

// olderRelays tracks the older splitter's consumer; reap calls it once a
// second.
type olderRelays struct {
	quiet      time.Duration
	seen       uint64    // the consumer's delivered sequence last seen
	quietSince time.Time // zero while in use
}

// watchOlderRelays records whether references may be written: there is no
// older splitter's consumer, or it has gone unused for olderSplitterQuiet,
// in which case it is deleted (a relay of an earlier release started later,
// after a downgrade, makes it again, and is seen).
func (q *Queue) watchOlderRelays(ctx context.Context) error {
	name := q.opts.Stream + olderSplitConsumer
	c, err := q.stream.Consumer(ctx, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		q.older.quietSince = time.Time{}
		q.refs.Store(true)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read consumer %s: %w", name, err)
	}
	info := c.CachedInfo()
	now := time.Now()
	if info.NumWaiting > 0 || info.NumAckPending > 0 || info.Delivered.Consumer != q.older.seen {
		q.older.seen = info.Delivered.Consumer
		q.older.quietSince = time.Time{}
		q.refs.Store(false)
		return nil
	}
	if q.older.quietSince.IsZero() {
		q.older.quietSince = now
	}
	if now.Sub(q.older.quietSince) < q.older.quiet {
		q.refs.Store(false)
		return nil
	}
	q.log.Info("no relay of an earlier release has split for a while: removing its splitter's consumer; large messages are held in their packs from now on",
		"consumer", name)
	if err := q.stream.DeleteConsumer(ctx, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("delete consumer %s: %w", name, err)
	}
	q.refs.Store(true)
	return nil
}
