package queue

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
)

// TestLateServerStrandsNothing reproduces the cause of a flake seen in CI
// (a committed message that Next could not find for 30 s): on a loaded
// machine the server sees a pull request late, so it expires the request
// later than a client with its own deadline stops waiting for it. A message
// the server hands out in between lands in an inbox nobody reads and comes
// back only after AckWait. Here the lateness is made on purpose, with a
// proxy that delays every byte from the queue's connection to the server,
// and a message is published (on a direct connection) just after the moment
// a 5 s client-side poll would have given up.
func TestLateServerStrandsNothing(t *testing.T) {
	url, direct, delay := slowNATS(t)
	q, err := Open(context.Background(), Options{URL: url, Replicas: 1, AckWait: time.Minute,
		Registerer: prometheus.NewRegistry(), Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	// Open ran at full speed; from here on the server sees each byte late.
	delay.Store(int64(time.Second))

	got := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		p, err := q.Next(ctx)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- p.Envelope().ID
		p.Done(ctx)
	}()

	time.Sleep(5200 * time.Millisecond)
	record, err := encodeRecord(meta{Envelope: envelope("late-1", "rcpt@example.test"), Size: 4}, []byte("body"))
	if err != nil {
		t.Fatal(err)
	}
	js := directJetStream(t, direct)
	if _, err := js.Publish(ctx, q.subjQ, record); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-got:
		if id != "late-1" {
			t.Fatalf("Next returned %q, want the message late-1", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a message published while Next waited was not taken within 5 s: stranded in an abandoned pull until AckWait")
	}
}

// slowNATS starts a JetStream server on loopback and returns the address
// of a proxy in front of it, the server's own address, and the delay (zero
// at first) for which the proxy holds every byte from a client before
// passing it on, in order. Bytes to the client are not delayed.
func slowNATS(t *testing.T) (proxy, direct string, delay *atomic.Int64) {
	t.Helper()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	delay = &atomic.Int64{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", srv.Addr().String())
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); s.Close() })
			go delayed(c, s, delay)
			go func() { io.Copy(c, s); c.Close() }()
		}
	}()
	return "nats://" + ln.Addr().String(), "nats://" + srv.Addr().String(), delay
}

// delayed copies src to dst, each chunk held until delay after it was read.
func delayed(src, dst net.Conn, delay *atomic.Int64) {
	type chunk struct {
		b  []byte
		at time.Time
	}
	ch := make(chan chunk, 1024)
	go func() {
		defer close(ch)
		for {
			b := make([]byte, 32<<10)
			n, err := src.Read(b)
			if n > 0 {
				ch <- chunk{b[:n], time.Now().Add(time.Duration(delay.Load()))}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range ch {
		time.Sleep(time.Until(c.at))
		if _, err := dst.Write(c.b); err != nil {
			break
		}
	}
	dst.Close()
}
