package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// reapEvery is how often acknowledged leftovers are looked for.
const reapEvery = time.Minute

// reap deletes messages that a consumer has acknowledged but the stream
// still holds. A work-queue stream removes a message when it is
// acknowledged, but when the embedded server is killed (SIGKILL, power
// loss) it can come back with the consumer's acknowledgements on disk and
// some of those removals not: the messages were delivered, yet they would
// stay in the stream for good, counted in the queue depth. Everything at or
// below a consumer's ack floor is acknowledged by definition, so deleting
// it loses nothing.
func (q *Queue) reap(ctx context.Context) (int, error) {
	n := 0
	for _, c := range []struct {
		consumer jetstream.Consumer
		subject  string
	}{{q.deliver, q.subjQ}, {q.split, q.subjIn}} {
		info, err := c.consumer.Info(ctx)
		if err != nil {
			return n, fmt.Errorf("read consumer state: %w", err)
		}
		floor := info.AckFloor.Stream
		for seq := uint64(1); seq <= floor; {
			m, err := q.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(c.subject))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				return n, fmt.Errorf("look for acknowledged messages: %w", err)
			}
			if m.Sequence > floor {
				break
			}
			if err := q.stream.DeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				return n, fmt.Errorf("delete acknowledged message %d: %w", m.Sequence, err)
			}
			n++
			seq = m.Sequence + 1
		}
	}
	return n, nil
}

// reapLoop runs reap at start and then every reapEvery.
func (q *Queue) reapLoop() {
	t := time.NewTicker(reapEvery)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(q.ctx, time.Minute)
		n, err := q.reap(ctx)
		cancel()
		switch {
		case err != nil && q.ctx.Err() == nil:
			q.log.Warn("removing acknowledged leftovers failed", "err", err)
		case n > 0:
			q.metrics.reaped.Add(float64(n))
			q.log.Info("removed acknowledged messages the stream still held after a crash", "messages", n)
		}
		select {
		case <-q.ctx.Done():
			return
		case <-t.C:
		}
	}
}
