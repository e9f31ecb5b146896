package spool

import "context"

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

// discardWriter counts what it drops, so a benchmark sees the same byte
// counts from Write as with a real spool.
type discardWriter struct {
	n int64
}

func (w *discardWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

func (w *discardWriter) Commit(context.Context) error { return nil }
func (w *discardWriter) Abort() error                 { return nil }
