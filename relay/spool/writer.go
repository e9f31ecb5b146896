package spool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
)

const (
	// writeBuffer holds a typical message whole, so it reaches the file in
	// one write; larger bodies stream through it.
	writeBuffer = 64 << 10
	readBuffer  = 64 << 10
)

// buffers recycles write buffers: at thousands of commits a second a fresh
// 64 KiB buffer per message would be most of the garbage the relay makes.
var buffers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBuffer) }}

var errFinished = errors.New("message already committed or aborted")

type writerState int

const (
	writing writerState = iota
	committed
	aborted
)

// dirWriter streams one message into tmp/<id>. Like any io.Writer it is not
// safe for concurrent use.
type dirWriter struct {
	d     *Dir
	id    string
	tmp   string
	f     *os.File
	buf   *bufio.Writer
	state writerState
}

// Write buffers body bytes; an error sticks and is reported again by Commit.
func (w *dirWriter) Write(p []byte) (int, error) {
	if w.state != writing {
		return 0, fmt.Errorf("spool message %s: %w", w.id, errFinished)
	}
	return w.buf.Write(p)
}

// Commit fsyncs the file, renames it into new/ and waits for the group fsync
// of new/ that covers the rename. If ctx ends while waiting, Commit returns
// its error but the message may still be delivered; it was not acknowledged,
// so that is at worst a duplicate.
func (w *dirWriter) Commit(ctx context.Context) error {
	if err := w.commit(ctx); err != nil {
		return fmt.Errorf("spool message %s: %w", w.id, err)
	}
	return nil
}

func (w *dirWriter) commit(ctx context.Context) error {
	if w.state != writing {
		return errFinished
	}
	// Refusing before the rename keeps a closing spool from publishing a
	// message whose client will be told it failed.
	if w.d.syncer.isClosed() {
		return errors.Join(ErrClosed, w.discard())
	}
	if err := w.persist(ctx); err != nil {
		return errors.Join(err, w.discard())
	}
	w.state = committed
	return w.d.syncer.sync(ctx)
}

// persist makes the file's content durable before its name appears in new/,
// so a crash can never expose a truncated message to delivery.
func (w *dirWriter) persist(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := w.buf.Flush(); err != nil {
		return err
	}
	w.releaseBuffer()
	if err := w.f.Sync(); err != nil {
		return err
	}
	err := w.f.Close()
	w.f = nil
	if err != nil {
		return err
	}
	return publish(w.tmp, w.d.newPath(w.id))
}

// publishChecked is publish where the kernel cannot refuse atomically; the
// window between the check and the rename only matters if ids collide.
func publishChecked(from, to string) error {
	if _, err := os.Lstat(to); err == nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: fs.ErrExist}
	}
	return os.Rename(from, to)
}

// Abort removes the unfinished file; after Commit it does nothing.
func (w *dirWriter) Abort() error {
	if w.state != writing {
		return nil
	}
	if err := w.discard(); err != nil {
		return fmt.Errorf("spool message %s: %w", w.id, err)
	}
	return nil
}

func (w *dirWriter) discard() error {
	w.state = aborted
	w.releaseBuffer()
	var closeErr error
	if w.f != nil {
		closeErr = w.f.Close()
		w.f = nil
	}
	return errors.Join(closeErr, os.Remove(w.tmp))
}

func (w *dirWriter) releaseBuffer() {
	if w.buf == nil {
		return
	}
	w.buf.Reset(nil)
	buffers.Put(w.buf)
	w.buf = nil
}
