package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// reapEvery is how often acknowledged messages are removed.
const reapEvery = time.Second

// reap removes the messages that a consumer has acknowledged: everything on
// the consumer's subject at or below its ack floor, in one purge. Held packs
// wait longer, until every record naming them is done (see heldMark).
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
	// Neither the mark nor the last queued message, when they cannot be
	// read, holds back the purges that do not need them. Only a stream
	// that holds large records has held packs to purge (see heldPacksKey).
	var markErr, lastErr error
	if q.marked {
		markErr = q.watchMark(ctx)
	}
	// The order matters for the held packs: see heldMark.
	split, err := q.split.Info(ctx)
	if err != nil {
		return fmt.Errorf("read consumer state: %w", err)
	}
	var lastQueued uint64
	if q.marked {
		lastQueued, lastErr = q.lastSeq(ctx, q.subjQ)
	}
	deliver, err := q.deliver.Info(ctx)
	if err != nil {
		return fmt.Errorf("read consumer state: %w", err)
	}
	if purged, err := q.purgeTo(ctx, q.subjQ, deliver.AckFloor.Stream); err != nil {
		return err
	} else if purged {
		if err := q.fin.prune(deliver.AckFloor.Stream); err != nil {
			return err
		}
	}
	if _, err := q.purgeTo(ctx, q.subjIn, split.AckFloor.Stream); err != nil {
		return err
	}
	if !q.marked || lastErr != nil {
		return errors.Join(markErr, lastErr)
	}
	held := q.heldFloor(heldMark{splitFloor: split.AckFloor.Stream, lastQueued: lastQueued}, deliver.AckFloor.Stream)
	_, err = q.purgeTo(ctx, q.subjHeld, held)
	return errors.Join(markErr, err)
}

// purgeTo removes the messages on subject up to floor, unless done before.
func (q *Queue) purgeTo(ctx context.Context, subject string, floor uint64) (bool, error) {
	if floor <= q.purgedTo[subject] {
		return false, nil
	}
	err := q.stream.Purge(ctx, jetstream.WithPurgeSubject(subject), jetstream.WithPurgeSequence(floor+1))
	if err != nil {
		return false, fmt.Errorf("remove acknowledged messages on %s: %w", subject, err)
	}
	q.purgedTo[subject] = floor
	return true, nil
}

// lastSeq is the sequence of the last message on subject, 0 if none, as
// the stream's leader knows it.
func (q *Queue) lastSeq(ctx context.Context, subject string) (uint64, error) {
	m, found, err := q.leaderGet(ctx, 0, subject)
	if err != nil {
		return 0, fmt.Errorf("read the last message on %s: %w", subject, err)
	}
	if !found {
		return 0, nil
	}
	return m.Seq, nil
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
