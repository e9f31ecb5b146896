package httpapi_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// benchText is the body of the benchmark's message, about 1 KB.
var benchText = strings.Repeat("The quick brown fox jumps over the lazy dog. ", 22)

// BenchmarkSubmit compares the two doors on one relay: the same message
// (one recipient, about 1 KB of text) queued durably in the embedded
// JetStream, by 8 clients at once, each over one kept-alive connection
// (an SMTP session logged in once, an HTTP/1.1 connection).
//
//	go test -run '^$' -bench BenchmarkSubmit -benchtime 3000x ./relay/httpapi
func BenchmarkSubmit(b *testing.B) {
	r := startRelay(b)
	b.Run("smtp", func(b *testing.B) { benchDoor(b, func() func() bool { return smtpSender(b, r) }) })
	b.Run("api", func(b *testing.B) { benchDoor(b, func() func() bool { return apiSender(b, r) }) })
}

// benchDoor runs 8 senders in parallel; each sender returns false once it
// failed (it reported why).
func benchDoor(b *testing.B, newSender func() func() bool) {
	b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0)))
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		send := newSender()
		for pb.Next() {
			if !send() {
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

func smtpSender(b *testing.B, r *relay) func() bool {
	c := dialSMTP(b, r)
	c.expect("AUTH PLAIN "+b64("\x00"+userBench+"\x00"+r.keys[userBench]), "235")
	msg := "From: Ann <ann@acme.example>\r\nTo: <bob@example.com>\r\nSubject: benchmark\r\n" +
		"Date: Fri, 04 Dec 2026 22:00:00 +0000\r\nMessage-Id: <bench@acme.example>\r\nMime-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + benchText
	return func() bool {
		if reply := c.send("ann@acme.example", []string{"bob@example.com"}, msg); !strings.HasPrefix(reply, "250 ") {
			b.Errorf("SMTP: %q", reply)
			return false
		}
		return true
	}
}

func apiSender(b *testing.B, r *relay) func() bool {
	client := r.client()
	body, _ := json.Marshal(map[string]any{"from": "Ann <ann@acme.example>", "to": []string{"bob@example.com"},
		"subject": "benchmark", "text": benchText})
	return func() bool {
		req, _ := http.NewRequest(http.MethodPost, r.url("/v1/mail/send"), bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.SetBasicAuth(userBench, r.keys[userBench])
		resp, err := client.Do(req)
		if err != nil {
			b.Errorf("API: %v", err)
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Errorf("API: %d", resp.StatusCode)
			return false
		}
		return true
	}
}

// BenchmarkLargeRequest sends a 15 MB JSON request (an 11 MB attachment)
// and reports the server's heap at its peak above where it started, as a
// multiple of the body: the figure behind the slots' bytes (slots.go).
//
//	go test -run '^$' -bench BenchmarkLargeRequest -benchtime 5x ./relay/httpapi
func BenchmarkLargeRequest(b *testing.B) {
	r := startRelay(b)
	file := make([]byte, 11_000_000)
	rand.Read(file)
	body, _ := json.Marshal(map[string]any{"from": "ann@acme.example", "to": []string{"bob@example.com"}, "subject": "large",
		"text": "x", "attachments": []map[string]any{{"filename": "a.bin", "content": base64.StdEncoding.EncodeToString(file)}}})
	client := r.client()
	var worst float64
	for b.Loop() {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		stop := watchPeakHeap()
		req, _ := http.NewRequest(http.MethodPost, r.url("/v1/mail/send"), bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.SetBasicAuth(userBench, r.keys[userBench])
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		peak := stop()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
		worst = max(worst, float64(peak-min(peak, before.HeapAlloc))/float64(len(body)))
	}
	b.ReportMetric(worst, "peak-heap/body")
}

// watchPeakHeap samples the heap every millisecond until the returned
// function is called, which returns the largest sample.
func watchPeakHeap() func() uint64 {
	done, result := make(chan struct{}), make(chan uint64)
	go func() {
		var m runtime.MemStats
		var peak uint64
		for {
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapAlloc)
			select {
			case <-done:
				result <- peak
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	return func() uint64 { close(done); return <-result }
}
