package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfleet/mailfleet/relay/spool"
)

// Next waits for a message due for delivery. Each call pulls exactly one
// message, so a pod never holds more than its workers are delivering: a
// prefetched message would wait out its AckWait in a buffer.
func (q *Queue) Next(ctx context.Context) (spool.Pending, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := q.ctx.Err(); err != nil {
			return nil, errors.New("queue closed")
		}
		msg, err := q.fetchOne(ctx, q.deliver)
		switch {
		case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
			continue
		case errors.Is(err, nats.ErrConnectionClosed):
			return nil, errors.New("queue closed")
		case err != nil:
			q.log.Warn("fetch from the queue failed", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		p, err := q.pending(msg)
		if err != nil {
			// A record nobody can read would come back forever.
			q.log.Error("dropping an unreadable queue record", "subject", msg.Subject(), "err", err)
			msg.Term()
			continue
		}
		if q.fin.finishedBefore(p.seq) {
			// Finished by a process killed before the server wrote down
			// its acknowledgement (see finished).
			q.metrics.stale.Inc()
			if err := msg.DoubleAck(ctx); err != nil {
				q.log.Warn("ack a finished message handed out again", "id", p.meta.Envelope.ID, "err", err)
			}
			continue
		}
		stale, err := q.findBody(ctx, p)
		if errors.Is(err, errCorrupt) {
			q.log.Error("dropping a queue record whose body cannot be read", "id", p.meta.Envelope.ID, "err", err)
			msg.Term()
			continue
		}
		if err != nil {
			q.log.Warn("find a message's body", "id", p.meta.Envelope.ID, "err", err)
			msg.NakWithDelay(time.Second)
			continue
		}
		if stale {
			q.log.Warn("dropping a copy of a finished message: its body was removed when it was done",
				"id", p.meta.Envelope.ID)
			q.metrics.stale.Inc()
			if err := msg.DoubleAck(ctx); err != nil {
				q.log.Warn("ack a stale copy", "id", p.meta.Envelope.ID, "err", err)
			}
			continue
		}
		return p, nil
	}
}

// fetchOne pulls one message. The pull request's lifetime is the server's
// to end (nats.go's default expiry, with heartbeats that notice a lost
// connection): a client that stops waiting before the server expires its
// request strands whatever the server hands out in between, unacknowledged
// in an inbox nobody reads, until AckWait brings it back a minute later.
// With a client-side deadline close to the server's expiry, a server a few
// hundred milliseconds late (a loaded machine) opened that window at the
// end of every poll, and a freshly committed pack or message fell into it.
// So the pull carries no deadline; it is abandoned only when the caller
// gives up (ctx ends) or the queue closes, and the server's expiry ends an
// idle pull with nats.ErrTimeout.
func (q *Queue) fetchOne(ctx context.Context, c jetstream.Consumer) (jetstream.Msg, error) {
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stopCaller := context.AfterFunc(ctx, cancel)
	defer stopCaller()
	stopQueue := context.AfterFunc(q.ctx, cancel)
	defer stopQueue()
	return c.Next(jetstream.FetchContext(fctx))
}

// findBody reads the body of a message delivered from its held pack, and
// reports whether the body of a message in parts or in a held pack is
// gone. Parts and held packs are purged only once their message is done, so
// a copy whose body is gone is one that was already delivered: after a
// crash of the embedded server a pack can be split a second time, and the
// server's duplicate detection no longer knows the ids of messages already
// removed. Delivering such a copy would fail forever.
func (q *Queue) findBody(ctx context.Context, p *pending) (stale bool, err error) {
	m := p.meta
	if m.Pack != nil {
		p.body, err = q.heldBody(ctx, m)
		if errors.Is(err, errPackGone) {
			return true, nil
		}
		return false, err
	}
	if m.Parts == 0 {
		return false, nil
	}
	for _, n := range []int{0, m.Parts - 1} {
		gctx, cancel := context.WithTimeout(ctx, publishTimeout)
		_, err := q.bodies.GetLastMsgForSubject(gctx, q.partSubject(m.Envelope.ID, n))
		cancel()
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
	return false, nil
}

func (q *Queue) pending(msg jetstream.Msg) (*pending, error) {
	m, body, err := decodeRecord(msg.Data())
	if err != nil {
		return nil, err
	}
	p := &pending{q: q, msg: msg, meta: m, body: body}
	if md, err := msg.Metadata(); err == nil {
		q.countHandOut(m.Envelope.ID, md)
		p.seq = md.Sequence.Stream
	}
	return p, nil
}

// countHandOut counts a redelivery: the previous holder died or took longer
// than AckWait without Touch, so its recipients may get this message twice.
// NumDelivered says so unless the embedded server died with the previous
// holder and forgot it handed the message out (see handedOut).
func (q *Queue) countHandOut(id string, md *jetstream.MsgMetadata) {
	seq := md.Sequence.Stream
	if md.NumDelivered > 1 || q.handed.handedBefore(seq) {
		q.metrics.redeliveries.Inc()
	}
	if err := q.handed.record(seq); err != nil {
		q.log.Warn("a redelivery after a crash may go uncounted", "id", id, "err", err)
	}
}

// pending is one message being delivered.
type pending struct {
	q    *Queue
	msg  jetstream.Msg
	meta meta
	body []byte // the inline or held body; nil when in parts
	seq  uint64 // the stream sequence
}

func (p *pending) Envelope() spool.Envelope {
	env := p.meta.Envelope
	env.To = append([]string(nil), env.To...)
	return env
}

func (p *pending) Attempts() int { return p.meta.Attempts }
func (p *pending) Size() int64   { return p.meta.Size }

// Open reads the body; parts are fetched one at a time as they are read.
func (p *pending) Open() (io.ReadCloser, error) {
	if p.meta.Parts == 0 {
		return io.NopCloser(bytes.NewReader(p.body)), nil
	}
	return &partsReader{p: p}, nil
}

func (p *pending) Touch(ctx context.Context) error {
	if err := p.msg.InProgress(); err != nil {
		return fmt.Errorf("touch message %s: %w", p.meta.Envelope.ID, err)
	}
	return nil
}

// Done removes the message, waiting for JetStream to confirm the ack, then
// its body parts.
func (p *pending) Done(ctx context.Context) error {
	p.recordFinished()
	if err := p.msg.DoubleAck(ctx); err != nil {
		return fmt.Errorf("ack message %s: %w", p.meta.Envelope.ID, err)
	}
	if p.meta.Parts > 0 {
		// Orphaned parts expire with the body stream's MaxAge, so a
		// failure here only costs disk for a while.
		if err := p.q.purgeBody(p.meta.Envelope.ID); err != nil {
			p.q.log.Warn("body parts stay until they expire", "id", p.meta.Envelope.ID, "err", err)
		}
	}
	return nil
}

// Retry schedules the remaining recipients, then acknowledges this copy.
// The schedule is acknowledged (on disk) before the ack is sent, so a crash
// in between leaves two copies, never none. Body parts are kept: the
// scheduled copy names them too.
func (p *pending) Retry(ctx context.Context, remaining []string, delay time.Duration) error {
	id := p.meta.Envelope.ID
	if len(remaining) == 0 {
		return fmt.Errorf("retry message %s: no recipients remain", id)
	}
	m := p.meta
	m.Envelope.To = append([]string(nil), remaining...)
	m.Attempts++
	// A held pack may be purged once this copy is acknowledged: the
	// scheduled one carries the body itself.
	m.Pack = nil
	record, err := encodeRecord(m, p.body)
	if err != nil {
		return err
	}
	at := time.Now().Add(delay).UTC()
	msg := nats.NewMsg(p.q.subjSched + "." + token(id))
	msg.Data = record
	msg.Header.Set("Nats-Schedule", "@at "+at.Format(time.RFC3339Nano))
	msg.Header.Set("Nats-Schedule-Target", p.q.subjQ)
	pctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	if _, err := p.q.js.PublishMsg(pctx, msg); err != nil {
		return fmt.Errorf("schedule retry of %s: %w", id, err)
	}
	p.recordFinished()
	if err := p.msg.DoubleAck(pctx); err != nil {
		// The scheduled copy exists; this one comes back after AckWait
		// and is delivered once more.
		return fmt.Errorf("ack message %s after scheduling its retry: %w", id, err)
	}
	return nil
}

// recordFinished notes this copy as finished before it is acknowledged; a
// failure costs a duplicate after a crash, no more.
func (p *pending) recordFinished() {
	if err := p.q.fin.record(p.seq); err != nil {
		p.q.log.Warn("a crash may deliver this message again", "id", p.meta.Envelope.ID, "err", err)
	}
}

// partsReader reads a body from the body stream, one part at a time.
type partsReader struct {
	p    *pending
	next int
	cur  []byte
	read int64
}

func (r *partsReader) Read(b []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.next == r.p.meta.Parts {
			if r.read != r.p.meta.Size {
				return 0, fmt.Errorf("message %s: body has %d bytes, want %d: %w", r.p.meta.Envelope.ID, r.read, r.p.meta.Size, errCorrupt)
			}
			return 0, io.EOF
		}
		ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
		raw, err := r.p.q.bodies.GetLastMsgForSubject(ctx, r.p.q.partSubject(r.p.meta.Envelope.ID, r.next))
		cancel()
		if err != nil {
			return 0, fmt.Errorf("read body part %d of %s: %w", r.next, r.p.meta.Envelope.ID, err)
		}
		r.cur = raw.Data
		r.next++
	}
	n := copy(b, r.cur)
	r.cur = r.cur[n:]
	r.read += int64(n)
	return n, nil
}

func (r *partsReader) Close() error { return nil }
