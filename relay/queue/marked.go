package queue

import (
	"context"
	"fmt"
)

// Held packs and the references to them are a format relays of earlier
// releases cannot read: such a relay reads a reference as a record whose
// body is missing and drops it. So only a queue stream this release made
// holds large records; it says so in its metadata, and only there does the
// splitter read through a consumer of its own (packsConsumer), which no
// earlier relay resets. A stream an earlier release made goes on as it did
// (large records published alone, olderSplitConsumer), so a rolling
// upgrade mixes nothing. Draining such a stream and deleting it lets the
// relays make a new one, which holds.
const (
	heldPacksKey       = "mailfleet.io/held-packs"
	packsConsumer      = "_packs"
	olderSplitConsumer = "_split"
)

// watchMark reads whether the stream still carries the mark. A relay of an
// earlier release starting on it (a downgrade) updates the stream without
// the mark; from then on nothing more is held or referenced. References
// already written wait on <prefix>.q, and that relay drops the ones it
// takes: a downgrade needs the queue drained first (operations.md).
func (q *Queue) watchMark(ctx context.Context) error {
	info, err := q.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("read stream %s: %w", q.opts.Stream, err)
	}
	q.hold.Store(info.Config.Metadata[heldPacksKey] == "1")
	return nil
}
