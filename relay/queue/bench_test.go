package queue

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkCommit measures group-committed messages per second into the
// embedded queue (file store, synced before every acknowledgement): 20
// writers, 4 KiB each, as 20 SMTP sessions would commit them.
func BenchmarkCommit(b *testing.B) {
	reg := prometheus.NewRegistry()
	q, err := Open(context.Background(), Options{Dir: b.TempDir(), Registerer: reg,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { q.Close() })
	body := make([]byte, 4096)
	const writers = 20
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range writers {
		n := b.N / writers
		if w < b.N%writers {
			n++
		}
		wg.Go(func() {
			for i := range n {
				commit(b, q, envelope(fmt.Sprintf("b-%d-%d", w, i), "a@x.example"), body, len(body))
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	b.ReportMetric(float64(b.N)/float64(histogramCountB(b, reg, "mailfleet_queue_commit_messages")), "msgs/commit")
}

func histogramCountB(b *testing.B, reg *prometheus.Registry, name string) uint64 {
	families, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	b.Fatalf("no metric %s", name)
	return 0
}
