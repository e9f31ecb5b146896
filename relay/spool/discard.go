package spool

import (
	"context"
	"os"
)

// Discard is a Spool that throws every message away and reports success. It
// exists for benchmarks of the protocol path only: its Commit never makes
// anything durable, so acknowledging on it loses mail. It is not for
// production, and the relay refuses to use it unless explicitly asked.
type Discard struct{}

var _ Spool = Discard{}

// Begin returns a Writer that accepts and drops the body.
func (Discard) Begin(ctx context.Context, env Envelope) (Writer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &discardWriter{}, nil
}

// Uncommittable returns a Writer for a message the spool could not begin.
// It drops the body, so that an SMTP session still reads it to its end and
// stays in step with the client; and its Commit fails with os.ErrInvalid,
// so that a message nothing stored can never be acknowledged, even on a
// path that forgot the failed Begin.
func Uncommittable() Writer { return &discardWriter{commitErr: os.ErrInvalid} }

// discardWriter counts what it drops, so a benchmark sees the same byte
// counts from Write as with a real spool. commitErr is what Commit
// returns: nil for Discard, an error for Uncommittable.
type discardWriter struct {
	n         int64
	commitErr error
}

func (w *discardWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

func (w *discardWriter) Commit(context.Context) error { return w.commitErr }
func (w *discardWriter) Abort() error                 { return nil }
func (w *discardWriter) Prepend(string)               {}
