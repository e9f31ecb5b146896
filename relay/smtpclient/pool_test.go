package smtpclient

import (
	"context"
	"sync"
	"testing"
	"time"
)

// poolFor returns a pool of sessions with s, closed when the test ends.
func poolFor(t *testing.T, s *server, max int, idleTimeout time.Duration) *Pool {
	t.Helper()
	p := NewPool(max, idleTimeout, time.Hour, func(ctx context.Context) (*Client, error) {
		return Dial(ctx, paramsFor(s))
	})
	t.Cleanup(p.Close)
	return p
}

func TestPoolIdleSessionsAreClosed(t *testing.T) {
	s := startServer(t)
	p := poolFor(t, s, 2, 50*time.Millisecond)
	c, _, err := p.Get(ctxFor(t))
	if err != nil {
		t.Fatal(err)
	}
	p.Put(c)
	time.Sleep(300 * time.Millisecond)
	if n := len(p.idle); n != 0 {
		t.Fatalf("%d idle sessions kept past the idle timeout", n)
	}
	c, reused, err := p.Get(ctxFor(t))
	if err != nil || reused {
		t.Fatalf("Get after the idle close: reused %v, %v; want a new session", reused, err)
	}
	p.Put(c)
	if n := s.conns.Load(); n != 2 {
		t.Fatalf("server saw %d connections, want a new one after the idle close", n)
	}
}

func TestPoolBoundsAndReusesSessions(t *testing.T) {
	s := startServer(t)
	p := poolFor(t, s, 2, time.Hour)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			c, _, err := p.Get(ctxFor(t))
			if err != nil {
				t.Error(err)
				return
			}
			time.Sleep(5 * time.Millisecond)
			p.Put(c)
		})
	}
	wg.Wait()
	if n := s.conns.Load(); n > 2 {
		t.Fatalf("server saw %d connections, limit 2", n)
	}
	// Close says QUIT to every idle session.
	p.Close()
	cmds, _ := s.got()
	if quits := count(cmds, "QUIT"); int64(quits) != s.conns.Load() {
		t.Fatalf("%d QUITs for %d sessions", quits, s.conns.Load())
	}
}
