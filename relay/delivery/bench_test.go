package delivery

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"
)

// BenchmarkSmarthost measures pooled delivery of 4 KiB messages to a local
// go-smtp sink from 20 concurrent workers, as dispatch runs them.
func BenchmarkSmarthost(b *testing.B) {
	s := startSink(b, sinkOptions{countOnly: true})
	sh, err := NewSmarthost(SmarthostConfig{Host: s.host(), Port: s.port(), Hostname: "relay.test", MaxConnections: 20})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sh.Close() })
	body := append([]byte("Subject: bench\r\n\r\n"), bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), 64)...)
	var n atomic.Int64
	b.SetParallelism(10) // 10 per GOMAXPROCS: 20 workers on the 2 cores here
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			rs := sh.Deliver(context.Background(), message(fmt.Sprint("b", i), body, "a@example.org"))
			if rs[0].Outcome != Delivered {
				b.Errorf("%+v", rs[0])
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(s.conns.Load()), "connections")
	if s.accepted.Load() < int64(b.N) {
		b.Fatalf("sink accepted %d of %d", s.accepted.Load(), b.N)
	}
}
