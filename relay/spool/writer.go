package spool

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sync"
)

// spillAt is how much of a record a Writer keeps in memory. Almost every
// message fits and reaches the segment in the committer's single write;
// a larger one streams to a file under tmp/, so a session holds at most this
// much however large its message (16 MB by default).
const spillAt = 1 << 20

// buffers recycles record buffers: at thousands of commits a second a fresh
// buffer per message would be most of the garbage the relay makes.
var buffers = sync.Pool{New: func() any {
	b := make([]byte, 0, 64<<10)
	return &b
}}

var errFinished = errors.New("message already committed or aborted")

type writerState int

const (
	writing writerState = iota
	committed
	aborted
)

// record is a finished message on its way to the committer, which owns it
// from enqueue on.
type record struct {
	id      string
	env     Envelope
	buf     *[]byte  // the whole record; nil when spilled
	tmp     *os.File // the whole record, when it outgrew buf
	size    int64
	envLen  uint32
	bodyLen uint32
	off     int64 // set by the committer
}

// release returns the buffer and deletes the spill file; the record is in a
// segment by now, or failed.
func (r *record) release() error {
	if r.buf != nil {
		putBuffer(r.buf)
		r.buf = nil
	}
	if r.tmp == nil {
		return nil
	}
	err := errors.Join(r.tmp.Close(), os.Remove(r.tmp.Name()))
	r.tmp = nil
	return err
}

func putBuffer(b *[]byte) {
	*b = (*b)[:0]
	buffers.Put(b)
}

// logWriter builds one record: header space, envelope, then the body as it
// arrives, with the CRC kept up to date so a spilled body is never read back
// to compute it. Like any io.Writer it is not safe for concurrent use.
type logWriter struct {
	l       *Log
	id      string
	env     Envelope
	buf     *[]byte  // the record so far or, once spilled, what tmp has not got yet
	tmp     *os.File // nil until the record outgrows spillAt
	envLen  uint32
	bodyLen int64
	crc     uint32
	err     error // sticky: reported again by Commit
	state   writerState
}

func newLogWriter(l *Log, env Envelope, envJSON []byte) (*logWriter, error) {
	w := &logWriter{
		l: l, id: env.ID, env: env, buf: buffers.Get().(*[]byte),
		envLen: uint32(len(envJSON)),
		crc:    crc32.Update(0, castagnoli, envJSON),
	}
	var hdr [headerSize]byte // filled in by Commit, once the lengths and CRC are known
	w.buffer(hdr[:])
	// An envelope of thousands of recipients may be past spillAt already.
	if err := w.add(envJSON); err != nil {
		return nil, errors.Join(err, w.discard())
	}
	return w, nil
}

// buffer appends p, which fits under spillAt, growing the buffer no further
// than spillAt: append's own growth would overshoot, and the pool would then
// hand the larger buffer to every later message.
func (w *logWriter) buffer(p []byte) {
	b := *w.buf
	if need := len(b) + len(p); need > cap(b) {
		grown := make([]byte, len(b), min(max(2*cap(b), need), spillAt))
		copy(grown, b)
		b = grown
	}
	*w.buf = append(b, p...)
}

// add buffers p, or spills when the record would outgrow spillAt.
func (w *logWriter) add(p []byte) error {
	if len(*w.buf)+len(p) <= spillAt {
		w.buffer(p)
		return nil
	}
	return w.spill(p)
}

// Write adds body bytes. An error sticks and is reported again by Commit.
func (w *logWriter) Write(p []byte) (int, error) {
	if err := w.write(p); err != nil {
		return 0, fmt.Errorf("spool message %s: %w", w.id, err)
	}
	return len(p), nil
}

func (w *logWriter) write(p []byte) error {
	if w.state != writing {
		return errFinished
	}
	if w.err != nil {
		return w.err
	}
	if w.bodyLen+int64(len(p)) > maxBody {
		w.err = errBodyTooLarge
		return w.err
	}
	w.crc = crc32.Update(w.crc, castagnoli, p)
	w.bodyLen += int64(len(p))
	if err := w.add(p); err != nil {
		w.err = err
		return err
	}
	return nil
}

// spill moves what the buffer holds, then p, to the record's file under
// tmp/, creating it the first time. Nothing is synced: the committer copies
// the file into a segment, and that is what gets synced.
func (w *logWriter) spill(p []byte) error {
	if w.tmp == nil {
		f, err := os.CreateTemp(w.l.tmpPath(), w.id+".*")
		if err != nil {
			return err
		}
		w.tmp = f
	}
	if _, err := w.tmp.Write(*w.buf); err != nil {
		return err
	}
	*w.buf = (*w.buf)[:0]
	if len(p) > spillAt {
		_, err := w.tmp.Write(p)
		return err
	}
	w.buffer(p)
	return nil
}

// Commit hands the record to the committer and waits for the fdatasync that
// covers it. If ctx ends while waiting, Commit returns its error but the
// message may still be committed and delivered; it was not acknowledged, so
// that is at worst a duplicate.
func (w *logWriter) Commit(ctx context.Context) error {
	if err := w.commit(ctx); err != nil {
		return fmt.Errorf("spool message %s: %w", w.id, err)
	}
	return nil
}

func (w *logWriter) commit(ctx context.Context) error {
	if w.state != writing {
		return errFinished
	}
	err := w.err
	if err == nil {
		err = ctx.Err()
	}
	var r *record
	if err == nil {
		r, err = w.finish()
	}
	if err != nil {
		return errors.Join(err, w.discard())
	}
	w.state = committed
	b, err := w.l.enqueue(r)
	if err != nil {
		// Refused before any write: a closing spool does not publish a
		// message whose client will be told it failed.
		w.l.release(w.id)
		return errors.Join(err, r.release())
	}
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		select {
		case <-b.done: // both ready: the outcome is known, report it
			return b.err
		default:
			return ctx.Err()
		}
	}
}

// finish fills in the header and passes the buffer or file to a record.
func (w *logWriter) finish() (*record, error) {
	h := header{envLen: w.envLen, bodyLen: uint32(w.bodyLen), crc: w.crc}
	r := &record{id: w.id, env: w.env, size: h.size(), envLen: h.envLen, bodyLen: h.bodyLen}
	if w.tmp == nil {
		h.put(*w.buf)
		r.buf, w.buf = w.buf, nil
		return r, nil
	}
	var hdr [headerSize]byte
	h.put(hdr[:])
	if _, err := w.tmp.Write(*w.buf); err != nil {
		return nil, err
	}
	if _, err := w.tmp.WriteAt(hdr[:], 0); err != nil {
		return nil, err
	}
	putBuffer(w.buf)
	w.buf = nil
	r.tmp, w.tmp = w.tmp, nil
	return r, nil
}

// Abort drops the message and frees its id; after Commit it does nothing.
func (w *logWriter) Abort() error {
	if w.state != writing {
		return nil
	}
	if err := w.discard(); err != nil {
		return fmt.Errorf("spool message %s: %w", w.id, err)
	}
	return nil
}

func (w *logWriter) discard() error {
	w.state = aborted
	if w.buf != nil {
		putBuffer(w.buf)
		w.buf = nil
	}
	var err error
	if w.tmp != nil {
		err = errors.Join(w.tmp.Close(), os.Remove(w.tmp.Name()))
		w.tmp = nil
	}
	w.l.release(w.id)
	return err
}
