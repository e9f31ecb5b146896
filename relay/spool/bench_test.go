package spool

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
)

// sessions is the concurrency the relay is sized for.
const sessions = 20

// BenchmarkLogCommit measures Begin+Write+Commit of 4 KiB messages, with one
// writer and with about 20 concurrent ones (as 20 SMTP sessions would). With
// one writer every commit pays a whole fdatasync; with 20 the committer's
// batches share them.
func BenchmarkLogCommit(b *testing.B) {
	body := randomBytes(4096, 7)
	b.Run("writers=1", func(b *testing.B) {
		l := openTestLog(b, b.TempDir())
		b.SetBytes(int64(len(body)))
		for i := 0; b.Loop(); i++ {
			commit(b, l, envelope(fmt.Sprintf("m%010d", i)), body)
		}
		reportRate(b)
	})
	b.Run(fmt.Sprintf("writers=%d", sessions), func(b *testing.B) {
		l := openTestLog(b, b.TempDir())
		var seq atomic.Int64
		b.SetBytes(int64(len(body)))
		b.SetParallelism((sessions + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := writeMessage(l, envelope(fmt.Sprintf("m%010d", seq.Add(1))), body); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportRate(b)
	})
}

// BenchmarkDiscardCommit is the floor: the same path with no file system.
func BenchmarkDiscardCommit(b *testing.B) {
	body := randomBytes(4096, 7)
	ctx := context.Background()
	b.SetParallelism((sessions + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w, _ := Discard{}.Begin(ctx, envelope("m"))
			w.Write(body)
			w.Commit(ctx)
		}
	})
	reportRate(b)
}

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
}
