package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfleet/mailfleet/relay/spool"
)

var errFinished = errors.New("message already committed or aborted")

// buffers recycles body buffers: at thousands of commits a second a fresh
// buffer per message would be most of the garbage the relay makes.
var buffers = sync.Pool{New: func() any { return bytes.NewBuffer(make([]byte, 0, 64<<10)) }}

// commitReq is one message waiting for the group commit.
type commitReq struct {
	record []byte
	held   bool       // the record goes to a held pack (see holds)
	done   chan error // buffered: the committer never waits for a gone writer
}

// Begin starts a message. The body is kept in memory up to one part; a
// larger one goes to the body stream part by part as it arrives.
func (q *Queue) Begin(ctx context.Context, env spool.Envelope) (spool.Writer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if env.ID == "" {
		return nil, errors.New("queue: message without an id")
	}
	return &writer{q: q, env: env, buf: buffers.Get().(*bytes.Buffer)}, nil
}

// writer receives one body. Like any io.Writer it is not safe for
// concurrent use.
type writer struct {
	q     *Queue
	env   spool.Envelope
	buf   *bytes.Buffer
	size  int64
	parts int
	err   error // sticky: reported again by Commit
	done  bool
}

// Write adds body bytes; once they outgrow a part, full parts are published.
func (w *writer) Write(p []byte) (int, error) {
	if w.done {
		return 0, errFinished
	}
	if w.err != nil {
		return 0, w.err
	}
	w.buf.Write(p)
	w.size += int64(len(p))
	for w.buf.Len() > w.q.partSize {
		if err := w.publishPart(w.buf.Next(w.q.partSize)); err != nil {
			w.err = fmt.Errorf("queue message %s: %w", w.env.ID, err)
			return 0, w.err
		}
	}
	if w.buf.Len() == 0 {
		w.buf.Reset()
	}
	return len(p), nil
}

// publishPart writes the next part and waits for JetStream's ack. Parts of
// a message that is never committed stay until Abort purges them or, after
// a crash, until the body stream's MaxAge.
func (w *writer) publishPart(b []byte) error {
	ctx, cancel := context.WithTimeout(w.q.ctx, publishTimeout)
	defer cancel()
	subj := w.q.partSubject(w.env.ID, w.parts)
	if _, err := w.q.js.Publish(ctx, subj, b); err != nil {
		return fmt.Errorf("publish body part %d: %w", w.parts, err)
	}
	w.parts++
	return nil
}

func (q *Queue) partSubject(id string, n int) string {
	return q.subjBody + "." + token(id) + "." + strconv.Itoa(n)
}

// Commit queues the message and returns once JetStream acknowledged the
// pack that holds it, which it does only after the pack is on disk (or on a
// quorum of replicas). If ctx ends first, Commit reports that, but the
// message may still be queued: it was not acknowledged to the client, so
// that is at worst a duplicate.
func (w *writer) Commit(ctx context.Context) error {
	if err := w.commit(ctx); err != nil {
		return fmt.Errorf("queue message %s: %w", w.env.ID, err)
	}
	return nil
}

func (w *writer) commit(ctx context.Context) error {
	if w.done {
		return errFinished
	}
	start := time.Now()
	err := w.err
	if err == nil {
		err = ctx.Err()
	}
	if err == nil && w.parts > 0 && w.buf.Len() > 0 {
		err = w.publishPart(w.buf.Bytes())
	}
	var record []byte
	var held bool
	if err == nil {
		m := meta{Envelope: w.env, Size: w.size, Parts: w.parts}
		var inline []byte
		if w.parts == 0 {
			inline = w.buf.Bytes()
		}
		record, err = encodeRecord(m, inline)
		held = w.q.holds(m, inline)
	}
	if err != nil {
		return errors.Join(err, w.abort())
	}
	w.release()
	w.done = true
	if !held && len(record) >= directMin {
		return w.publishDirect(ctx, record, start)
	}
	req := &commitReq{record: record, held: held, done: make(chan error, 1)}
	if w.q.ctx.Err() != nil {
		return errors.Join(errQueueClosed, w.purgeParts())
	}
	select {
	case w.q.commits <- req:
	case <-ctx.Done():
		return errors.Join(ctx.Err(), w.purgeParts())
	case <-w.q.ctx.Done():
		return errors.Join(errQueueClosed, w.purgeParts())
	}
	select {
	case err = <-req.done:
	case <-ctx.Done():
		return ctx.Err()
	case <-w.q.committerDone:
		// A request that entered the buffer after the committer's last
		// look at it (Close raced this commit) is never answered; one it
		// took has its answer waiting.
		select {
		case err = <-req.done:
		default:
			err = errQueueClosed
		}
	}
	if err != nil {
		return err
	}
	w.q.metrics.publish.Observe(time.Since(start).Seconds())
	return nil
}

// directMin is the record size from which a message on a stream that does
// not hold large records (see heldPacksKey) skips the pack and is written
// straight to <prefix>.q. In a pack, its bytes would be written three
// times (the pack, the atomic batch's staging, the split copy); alone,
// once, with a sync of its own.
const directMin = heldMin

// publishDirect writes one large record to <prefix>.q and waits for its
// acknowledgement, which comes after the sync.
func (w *writer) publishDirect(ctx context.Context, record []byte, start time.Time) error {
	msg := nats.NewMsg(w.q.subjQ)
	msg.Data = record
	msg.Header.Set(jetstream.MsgIDHeader, w.env.ID)
	pctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	// A failed publish may still have stored the record, so its parts (if
	// any: an envelope with thousands of recipients) are left to expire
	// with the body stream's MaxAge rather than purged under it.
	if _, err := w.q.js.PublishMsg(pctx, msg); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	w.q.metrics.publish.Observe(time.Since(start).Seconds())
	w.q.metrics.packSize.Observe(1)
	return nil
}

// Prepend adds header fields the envelope carries to every delivery.
func (w *writer) Prepend(fields string) { w.env.Prepend += fields }

// Abort drops the message and its parts; after Commit it does nothing.
func (w *writer) Abort() error {
	if w.done {
		return nil
	}
	if err := w.abort(); err != nil {
		return fmt.Errorf("queue message %s: %w", w.env.ID, err)
	}
	return nil
}

func (w *writer) abort() error {
	w.done = true
	w.release()
	return w.purgeParts()
}

func (w *writer) release() {
	if w.buf != nil {
		// A buffer grown for an unusually large message is left to the
		// garbage collector, so the pool keeps only ordinary ones.
		if w.buf.Cap() <= 2*w.q.partSize {
			w.buf.Reset()
			buffers.Put(w.buf)
		}
		w.buf = nil
	}
}

func (w *writer) purgeParts() error {
	if w.parts == 0 {
		return nil
	}
	return w.q.purgeBody(w.env.ID)
}

func (q *Queue) purgeBody(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	if err := q.bodies.Purge(ctx, jetstream.WithPurgeSubject(q.subjBody+"."+token(id)+".>")); err != nil {
		return fmt.Errorf("purge body parts of %s: %w", id, err)
	}
	return nil
}

// errQueueClosed answers a commit made while, or after, the queue closes.
var errQueueClosed = errors.New("queue closed")

// commitLoop is the group commit: it takes every message whose Commit is
// waiting, up to what one stream message may hold, writes them as one pack
// and answers them all. While that write and its sync run, the next
// messages queue up and form the next pack, so the packs grow with the load
// and no timer delays a lone message.
func (q *Queue) commitLoop() {
	var next *commitReq
	for {
		if next == nil {
			select {
			case next = <-q.commits:
			case <-q.ctx.Done():
				q.failWaiting()
				return
			}
		}
		batch := []*commitReq{next}
		size := lenSize + len(next.record)
		held := next.held
		next = nil
	gather:
		for size < q.packMax {
			select {
			case r := <-q.commits:
				if size+lenSize+len(r.record) > q.packMax {
					next = r
					break gather
				}
				batch = append(batch, r)
				size += lenSize + len(r.record)
				held = held || r.held
			default:
				break gather
			}
		}
		pack := make([]byte, 0, size)
		for _, r := range batch {
			pack = appendPacked(pack, r.record)
		}
		subject := q.subjIn
		if held {
			subject = q.subjHeld
		}
		err := q.publishPack(pack, subject)
		if err != nil {
			err = fmt.Errorf("commit %d messages: %w", len(batch), err)
		}
		q.metrics.packSize.Observe(float64(len(batch)))
		for _, r := range batch {
			r.done <- err
		}
	}
}

func (q *Queue) publishPack(pack []byte, subject string) error {
	ctx, cancel := context.WithTimeout(q.ctx, publishTimeout)
	defer cancel()
	_, err := q.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: pack})
	return err
}

// failWaiting answers the commits still queued when the queue closes.
func (q *Queue) failWaiting() {
	for {
		select {
		case r := <-q.commits:
			r.done <- errQueueClosed
		default:
			return
		}
	}
}
