package spool

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// batch is the records one fdatasync covers. err is written before done is
// closed, so a waiter that saw done closed may read it.
type batch struct {
	recs []*record
	done chan struct{}
	err  error
}

// coalesceLimit bounds the committer's buffer: records up to it reach the
// file in one write instead of one write each.
const coalesceLimit = 1 << 20

// enqueue adds a finished record to the batch the committer has not taken
// yet, so the sync that releases it is one that starts after it was written.
func (l *Log) enqueue(r *record) (*batch, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	if l.next == nil {
		l.next = &batch{done: make(chan struct{})}
		// A full buffer means a kick is already pending; the committer will
		// see this batch when it handles that kick.
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
	l.next.recs = append(l.next.recs, r)
	return l.next, nil
}

// run is the committer: it takes whatever is queued each time it wakes. No
// timer is involved; while it writes and syncs one batch, the next gathers.
func (l *Log) run() {
	defer close(l.stopped)
	for range l.kick {
		l.flush()
	}
	// Close shut kick under mu, so no batch can be created any more; a batch
	// whose kick was still buffered was handled by the loop above.
	l.flush()
}

func (l *Log) flush() {
	l.mu.Lock()
	b := l.next
	l.next = nil
	l.mu.Unlock()
	if b == nil {
		return
	}
	seg, err := l.appendBatch(b.recs)
	// Index before releasing anyone: a caller told its message is committed
	// may look for it at once (dev mode's delivery is woken by the commit).
	l.mu.Lock()
	for _, r := range b.recs {
		delete(l.reserved, r.id)
		if err == nil {
			l.index[r.id] = &entry{seg: seg, off: r.off, envLen: r.envLen, bodyLen: r.bodyLen, env: r.env}
			seg.live++
		}
	}
	l.mu.Unlock()
	b.err = err
	close(b.done)
	for _, r := range b.recs {
		if err := r.release(); err != nil {
			l.log.Warn("spool could not remove a spilled body", "id", r.id, "err", err)
		}
	}
	if err == nil && l.size >= l.segmentLimit {
		l.rotate()
	}
}

// appendBatch writes the records to the active segment and makes them
// durable with one fdatasync. On failure no record of the batch may ever
// look committed: see abandonTail.
func (l *Log) appendBatch(recs []*record) (*segment, error) {
	if l.active == nil {
		// A failed batch or rotation left no segment to write to.
		if err := l.startSegment(); err != nil {
			return nil, err
		}
	}
	seg, start := l.active, l.size
	err := l.writeRecords(recs)
	if err == nil {
		err = l.sync(l.w)
	}
	if err != nil {
		l.abandonTail(start, err)
		return nil, fmt.Errorf("append to segment %s: %w", segmentName(seg.seq, logExt), err)
	}
	return seg, nil
}

func (l *Log) writeRecords(recs []*record) error {
	l.wbuf = l.wbuf[:0]
	flush := func() error {
		if len(l.wbuf) == 0 {
			return nil
		}
		_, err := l.w.Write(l.wbuf)
		l.wbuf = l.wbuf[:0]
		return err
	}
	for _, r := range recs {
		r.off = l.size
		l.size += r.size
		if r.tmp == nil {
			if len(l.wbuf)+len(*r.buf) > coalesceLimit {
				if err := flush(); err != nil {
					return err
				}
			}
			l.wbuf = append(l.wbuf, *r.buf...)
			continue
		}
		if err := flush(); err != nil {
			return err
		}
		if err := l.copySpilled(r); err != nil {
			return err
		}
	}
	return flush()
}

// copySpilled appends a record kept in a temporary file. os.File.ReadFrom
// uses copy_file_range on Linux, so the bytes need not pass through here.
func (l *Log) copySpilled(r *record) error {
	if _, err := r.tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	n, err := l.w.ReadFrom(io.LimitReader(r.tmp, r.size))
	if err == nil && n != r.size {
		err = fmt.Errorf("copied %d of %d bytes of a spilled message: %w", n, r.size, io.ErrUnexpectedEOF)
	}
	return err
}

// abandonTail handles a batch whose write or sync failed. None of its
// waiters is released with success, and none of its records may look
// committed later: the segment is cut back to where the batch began and
// sealed. After a failed write or fdatasync the kernel's idea of the file's
// tail cannot be trusted (Linux may have dropped the dirty pages and will not
// report the error twice), so the next batch goes to a new segment instead of
// after that tail. If the cut itself does not reach the disk, a crash may
// bring back records whose clients were told to retry: a duplicate, never a
// loss.
func (l *Log) abandonTail(start int64, cause error) {
	seg := l.active
	err := l.w.Truncate(start)
	if err == nil {
		err = l.sync(l.w)
	}
	args := []any{"segment", segmentName(seg.seq, logExt), "offset", start, "err", cause}
	if err != nil {
		args = append(args, "truncate_err", err)
	}
	l.log.Error("spool commit failed; sealing segment", args...)
	l.seal()
}

// rotate seals the active segment and starts the next one now, after the
// batch was released, so the next batch does not wait for it.
func (l *Log) rotate() {
	l.seal()
	if err := l.startSegment(); err != nil {
		// The next batch tries again, and fails if this still fails.
		l.log.Error("spool could not start a segment", "err", err)
	}
}

// seal stops appending to the active segment; if everything in it has been
// delivered already, it goes at once.
func (l *Log) seal() {
	seg := l.active
	if err := l.w.Close(); err != nil {
		l.log.Warn("spool could not close segment", "segment", segmentName(seg.seq, logExt), "err", err)
	}
	l.active, l.w, l.size = nil, nil, 0
	l.mu.Lock()
	seg.sealed = true
	empty := seg.live == 0
	l.mu.Unlock()
	if empty {
		if err := l.deleteSegment(seg); err != nil {
			l.log.Error("spool could not delete a delivered segment", "err", err)
		}
	}
}

// startSegment creates the next segment and makes its name durable before
// any record goes into it: the fdatasync of a batch covers the file's data
// and size, not the directory entry that finds it.
func (l *Log) startSegment() error {
	seg := &segment{seq: l.nextSeq, dir: l.segDir.Name()}
	// Taken even if this fails, so a stray file of that name is not retried.
	l.nextSeq++
	w, err := os.OpenFile(seg.logPath(), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("start segment: %w", err)
	}
	r, err := os.Open(seg.logPath())
	if err == nil {
		err = l.segDir.Sync()
	}
	if err != nil {
		var closeR error
		if r != nil {
			closeR = r.Close()
		}
		err = errors.Join(err, closeR, w.Close(), os.Remove(seg.logPath()))
		return fmt.Errorf("start segment %s: %w", filepath.Base(seg.logPath()), err)
	}
	seg.r = r
	l.mu.Lock()
	l.segs[seg.seq] = seg
	l.mu.Unlock()
	l.active, l.w, l.size = seg, w, 0
	l.log.Debug("spool started segment", "segment", segmentName(seg.seq, logExt))
	return nil
}
