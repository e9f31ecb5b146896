package queue

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestFewMessagesAreSplitTogether: a split is one atomic batch, which
// JetStream stages in a file store of its own, so packs of a few messages
// that arrive soon after a split wait and go together in the next one. A
// message after a quiet spell, and a pack of splitFew messages, go at once.
func TestFewMessagesAreSplitTogether(t *testing.T) {
	const every = 4 * time.Second
	reg := prometheus.NewRegistry()
	q := openQueue(t, t.TempDir(), func(o *Options) { o.Registerer = reg; o.splitEvery = every })
	body := []byte("Subject: split\r\n\r\nbody\r\n")

	start := time.Now()
	commit(t, q, envelope("quiet", "a@x.example"), body, 512)
	waitSplit(t, q, 1)
	if waited := time.Since(start); waited >= every/2 {
		t.Fatalf("the first message after a quiet spell waited %v for its split", waited)
	}

	for i := range 3 {
		commit(t, q, envelope(fmt.Sprintf("soon-%d", i), "a@x.example"), body, 512)
	}
	waitSplit(t, q, 4)
	if got := histogramCount(t, reg, "mailfleet_queue_split_messages"); got != 2 {
		t.Fatalf("%d splits for one message and then three packs of one each, want 2", got)
	}

	var pack []byte
	for i := range splitFew {
		env := envelope(fmt.Sprintf("many-%d", i), "a@x.example")
		record, err := encodeRecord(meta{Envelope: env, Size: int64(len(body))}, body)
		if err != nil {
			t.Fatal(err)
		}
		pack = appendPacked(pack, record)
	}
	sent := time.Now()
	if err := q.publishPack(pack, q.subjIn); err != nil {
		t.Fatal(err)
	}
	waitSplit(t, q, 4+splitFew)
	if waited := time.Since(sent); waited >= every/2 {
		t.Fatalf("a pack of %d messages waited %v for its split", splitFew, waited)
	}
}
