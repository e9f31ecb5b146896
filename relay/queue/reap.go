package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// reapEvery is how often acknowledged messages are removed.
const reapEvery = time.Second

// reap removes the messages that a consumer has acknowledged: everything on
// the consumer's subject at or below its ack floor, in one purge.
//
// The queue stream keeps acknowledged messages (limits retention) rather
// than removing each at its acknowledgement (work-queue retention): a
// removal writes a tombstone, and with every write synced that was one disk
// sync per delivered message, taken one at a time in the stream's write
// path. Delivery was capped near one message per sync (about 500 a second
// on this project's 2-core machine) whatever the number of workers. A
// purge writes all its tombstones with one sync, and an acknowledgement
// only updates the consumer's state, which the server writes at most ten
// times a second.
//
// What the purge removes is acknowledged by definition, so it loses
// nothing. If the embedded server is killed, it may come back with a
// consumer state up to a tenth of a second old: the messages acknowledged
// since are handed out again (each may reach its recipients twice, and
// counts in mailfleet_queue_redeliveries_total), never dropped.
//
// A stream made by an older relay keeps its work-queue retention (the
// server refuses to change it); there the purge finds only what a crash left
// behind.
func (q *Queue) reap(ctx context.Context) error {
	for _, c := range []struct {
		consumer jetstream.Consumer
		subject  string
	}{{q.deliver, q.subjQ}, {q.split, q.subjIn}} {
		info, err := c.consumer.Info(ctx)
		if err != nil {
			return fmt.Errorf("read consumer state: %w", err)
		}
		floor := info.AckFloor.Stream
		if floor <= q.purgedTo[c.subject] {
			continue
		}
		err = q.stream.Purge(ctx, jetstream.WithPurgeSubject(c.subject), jetstream.WithPurgeSequence(floor+1))
		if err != nil {
			return fmt.Errorf("remove acknowledged messages on %s: %w", c.subject, err)
		}
		q.purgedTo[c.subject] = floor
		if c.subject == q.subjQ {
			if err := q.fin.prune(floor); err != nil {
				return err
			}
		}
	}
	return nil
}

// reapLoop runs reap at start and then every reapEvery.
func (q *Queue) reapLoop() {
	t := time.NewTicker(reapEvery)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(q.ctx, time.Minute)
		err := q.reap(ctx)
		cancel()
		if err != nil && q.ctx.Err() == nil {
			q.log.Warn("removing acknowledged messages failed; they stay on disk until the next try", "err", err)
		}
		select {
		case <-q.ctx.Done():
			return
		case <-t.C:
		}
	}
}
