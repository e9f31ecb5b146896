package dispatch

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/internal/smtpsink"
	"github.com/mailfleet/mailfleet/relay/delivery"
	"github.com/mailfleet/mailfleet/relay/queue"
	"github.com/mailfleet/mailfleet/relay/smtpclient"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// BenchmarkEndToEnd measures the path after the 250: 20 writers commit 4 KiB,
// 40 KB and 100 KB messages to the embedded queue (synced before each commit returns) while
// the default number of workers deliver them through the smarthost transport to an SMTP sink
// on loopback. The figures are messages per second in and out of the sink's
// side, and the bytes the process sent to storage per message (disk-B/msg).
func BenchmarkEndToEnd(b *testing.B) {
	for _, size := range []int{4096, 40_000, 100_000} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) { benchEndToEnd(b, size) })
	}
}

func benchEndToEnd(b *testing.B, size int) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sink := smtpsink.Start(b)
	host, portStr, _ := net.SplitHostPort(sink.Addr)
	port, _ := strconv.Atoi(portStr)
	q, err := queue.Open(context.Background(), queue.Options{Dir: b.TempDir(), Log: log})
	if err != nil {
		b.Fatal(err)
	}
	transport, err := delivery.NewSmarthost(delivery.SmarthostConfig{Host: host, Port: port, TLS: smtpclient.TLSNone, Hostname: "relay.bench", Log: log})
	if err != nil {
		b.Fatal(err)
	}
	runDispatcher(b, Config{Destination: "bench"},
		Deps{Queue: q, Spool: q, Transport: transport, DSN: fakeDSN, IDs: &counter{}, Log: log},
		nil, func() { transport.Close(); q.Close() })
	body := "Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 78)+"\r\n", size/80) + "\r\n"

	b.ResetTimer()
	written := writeBytes()
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				w, err := q.Begin(context.Background(), spool.Envelope{ID: fmt.Sprintf("bench-%d", i), APIUser: "acme",
					From: "app@acme.example", To: []string{"user@example.net"}, ReceivedAt: time.Now().UTC()})
				if err != nil {
					b.Error(err)
					return
				}
				io.WriteString(w, body)
				if err := w.Commit(context.Background()); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	accepted := time.Since(start)
	for len(sink.Messages()) < b.N {
		select {
		case <-sink.Arrived():
		case <-time.After(time.Minute):
			b.Fatalf("%d of %d messages delivered after a minute without progress", len(sink.Messages()), b.N)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(writeBytes()-written)/float64(b.N), "disk-B/msg")
	b.ReportMetric(float64(b.N)/accepted.Seconds(), "accepted/s")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "delivered/s")
}

// writeBytes is what this process has sent to storage so far: Linux's
// /proc/self/io write_bytes less cancelled_write_bytes (pages dirtied, then
// dropped with their file before they were written, as JetStream's staging
// files for atomic batches), or 0 where that is not known.
func writeBytes() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	var written, cancelled int64
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "write_bytes: "); ok {
			written, _ = strconv.ParseInt(v, 10, 64)
		}
		if v, ok := strings.CutPrefix(line, "cancelled_write_bytes: "); ok {
			cancelled, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	return written - cancelled
}
