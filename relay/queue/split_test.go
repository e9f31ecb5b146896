package queue

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestFewMessagesAreSplitTogether: a split is one atomic batch, which
// JetStream stages in a file store of its own, so packs of a few messages
// that arrive soon after a split wait and go together in the next one. A
// message after a quiet spell, and a pack of splitFew messages, go at once.
func TestFewMessagesAreSplitTogether(t *testing.T) {
	const every = 3 * time.Second
	reg := prometheus.NewRegistry()
	q := openQueue(t, t.TempDir(), func(o *Options) {
		o.Registerer = reg
		o.splitEvery = every
		o.AckWait = time.Minute
	})
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
	// The split counts itself after it acknowledged its packs.
	waitSplitCounted(t, reg, 4)
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

// waitSplitCounted waits until the split histogram has counted n messages.
func waitSplitCounted(t *testing.T, reg *prometheus.Registry, n float64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for histogramSum(t, reg, "mailfleet_queue_split_messages") < n {
		if time.Now().After(deadline) {
			t.Fatalf("splits counted fewer than %v messages", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSplitWindowsStrandNothing: packs committed at every moment around
// the ends of the splitter's windows are all split within a few windows,
// none left in an abandoned pull request until AckWait. (Waiting with a
// pull given up at the window's end stranded 4 of these 600; a race, so
// the test catches it often, not always.)
func TestSplitWindowsStrandNothing(t *testing.T) {
	q := openQueue(t, t.TempDir(), func(o *Options) {
		o.splitEvery = 5 * time.Millisecond
		o.AckWait = time.Minute
	})
	body := []byte("Subject: split\r\n\r\nbody\r\n")
	const writers, each = 4, 150
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				commit(t, q, envelope(fmt.Sprintf("w%d-%d", w, i), "a@x.example"), body, 512)
				time.Sleep(time.Duration(rand.IntN(4000)) * time.Microsecond)
			}
		})
	}
	wg.Wait()
	waitSplit(t, q, writers*each)
}
