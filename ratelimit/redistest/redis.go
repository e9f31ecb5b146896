// Package redistest runs a real redis-server on loopback for tests: one a
// test can pause, kill and restart.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailfleet/mailfleet/internal/loopback"
	"github.com/mailfleet/mailfleet/internal/syncbuffer"
)

// Redis is a redis-server process on 127.0.0.1 for one test, with nothing
// persisted. It is stopped in t.Cleanup.
type Redis struct {
	// Addr is host:port; it stays the same across Restart.
	Addr string

	t    testing.TB
	bin  string
	dir  string
	out  *syncbuffer.Buffer
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartRedis starts redis-server on a free loopback port.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server is not installed: run hack/install-test-deps.sh (make test does)")
	}
	r := &Redis{t: t, bin: bin, dir: t.TempDir(), out: &syncbuffer.Buffer{}}
	t.Cleanup(func() {
		r.Kill()
		if t.Failed() {
			t.Logf("redis-server output:\n%s", r.out.String())
		}
	})
	// The port is found by binding port 0 and releasing it; another process
	// could take it in between, so a failed start tries a new port.
	for attempt := 0; ; attempt++ {
		r.Addr = loopback.FreeAddr(t)
		err := r.start()
		if err == nil {
			return r
		}
		if attempt == 2 {
			t.Fatalf("start redis-server: %v", err)
		}
	}
}

func (r *Redis) start() error {
	_, port, _ := net.SplitHostPort(r.Addr)
	cmd := exec.Command(r.bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", r.dir, "--daemonize", "no", "--loglevel", "warning")
	cmd.Stdout, cmd.Stderr = r.out, r.out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", r.bin, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	r.mu.Lock()
	r.cmd, r.done = cmd, done
	r.mu.Unlock()
	if err := r.waitReady(done); err != nil {
		r.Kill()
		return err
	}
	return nil
}

// waitReady polls PING until Redis answers, the process exits, or 10 s pass.
func (r *Redis) waitReady(exited <-chan struct{}) error {
	c := r.client()
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server on %s exited: %s", r.Addr, r.out.String())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s not answering: %w", r.Addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *Redis) client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1, DialTimeout: time.Second, DisableIdentity: true})
}

// Client returns a plain client for a test to look at or change Redis's
// state; it is closed in t.Cleanup.
func (r *Redis) Client() *redis.Client {
	c := r.client()
	r.t.Cleanup(func() { c.Close() })
	return c
}

// Pause stops Redis answering any client for d (CLIENT PAUSE ... ALL): the
// connections stay open and commands just wait, the worst case for a caller
// with a deadline.
func (r *Redis) Pause(d time.Duration) {
	r.t.Helper()
	c := r.client()
	defer c.Close()
	if err := c.Do(context.Background(), "CLIENT", "PAUSE", strconv.FormatInt(d.Milliseconds(), 10), "ALL").Err(); err != nil {
		r.t.Fatalf("CLIENT PAUSE: %v", err)
	}
}

// Kill ends the process with SIGKILL, as a crashed node would, and waits for
// it to be gone. Killing a stopped Redis does nothing.
func (r *Redis) Kill() {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-done
}

// Restart starts a killed Redis again on the same address, empty.
func (r *Redis) Restart() {
	r.t.Helper()
	if err := r.start(); err != nil {
		r.t.Fatalf("restart redis-server: %v", err)
	}
}

// WaitWindowStart sleeps until just after the next boundary of a
// calendar-aligned window on this machine's clock, which is Redis's clock in
// these tests, so that what a test does next happens early in one window.
func WaitWindowStart(window time.Duration) time.Time {
	now := time.Now()
	start := time.Unix((WindowOf(now, window)+1)*int64(window/time.Second), 0)
	time.Sleep(start.Sub(now) + 20*time.Millisecond)
	return start
}

// WindowOf numbers the window an instant falls in, as the counter does.
func WindowOf(at time.Time, window time.Duration) int64 {
	return at.Unix() / int64(window/time.Second)
}

// WaitForTimeLeft returns at once when at least need is left in the current
// window, and otherwise waits for the next one: a test whose few calls must
// fall in one window starts with it.
func WaitForTimeLeft(window, need time.Duration) {
	now := time.Now()
	end := time.Unix((WindowOf(now, window)+1)*int64(window/time.Second), 0)
	if end.Sub(now) < need {
		WaitWindowStart(window)
	}
}
