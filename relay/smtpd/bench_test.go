package smtpd_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/relay/budget"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// BenchmarkSubmit measures accepted messages per second over loopback: 20
// concurrent sessions, AUTH PLAIN, 4 KiB messages, MAIL/RCPT/DATA pipelined
// as smtp-source does; many messages per session (smtp-source -d) and one.
// "discard" measures the protocol and auth path; "jetstream" commits every
// message to the embedded JetStream queue the relay runs (file store,
// sync_interval: always) and has it acknowledged before the 250. Client and server share the machine, as they do
// when smtp-source drives Haraka or Postfix. Logs are formatted as in
// production and thrown away.
func BenchmarkSubmit(b *testing.B) {
	for _, store := range []string{"discard", "jetstream"} {
		for _, mode := range []string{"many-per-session", "one-per-session"} {
			b.Run(store+"/"+mode, func(b *testing.B) {
				benchSubmit(b, store, mode == "many-per-session", 4096)
			})
		}
	}
}

// BenchmarkSubmitLarge is BenchmarkSubmit's many-per-session runs with
// 100 KiB messages, where the bytes, not the round trips, cost.
func BenchmarkSubmitLarge(b *testing.B) {
	for _, store := range []string{"discard", "jetstream"} {
		b.Run(store, func(b *testing.B) { benchSubmit(b, store, true, 100<<10) })
	}
}

func benchSubmit(b *testing.B, store string, many bool, size int) {
	// A long run sends more than an account's 30,000 a minute; the budget
	// decision itself is measured by relay/budget's benchmarks. Logs are
	// formatted as in production and thrown away.
	opts := []relayOption{withBudget(unlimitedBudget{}), withLog(slog.New(slog.NewJSONHandler(io.Discard, nil)))}
	if store == "discard" {
		opts = append(opts, func(s *relaySpec) { s.deps.Spool = spool.Discard{} })
	}
	env := startRelay(b, opts...)
	addr := env.addr("smtp")
	key := env.keys[userMain]
	body := benchBody(size)
	const sessions = 20
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for s := range sessions {
		n := b.N / sessions
		if s < b.N%sessions {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := benchClient(addr, key, body, n, many); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
}

// withLog sends the relay's logs to log instead of the test's buffer.
func withLog(log *slog.Logger) relayOption {
	return func(s *relaySpec) { s.log = log }
}

type unlimitedBudget struct{}

func (unlimitedBudget) Take(context.Context, budget.Request) budget.Decision { return budget.Allow }

func benchBody(size int) string {
	var sb strings.Builder
	sb.WriteString("From: bench@ifaxin.com\r\nTo: sink@example.com\r\nSubject: benchmark\r\n\r\n")
	line := strings.Repeat("x", 76) + "\r\n"
	for sb.Len()+len(line) <= size {
		sb.WriteString(line)
	}
	return sb.String()
}

// benchClient submits n messages; with many, over one session.
func benchClient(addr, key, body string, n int, many bool) error {
	auth := "AUTH PLAIN " + b64("\x00"+userMain+"\x00"+key) + "\r\n"
	var c *benchConn
	var err error
	for i := range n {
		if c == nil {
			if c, err = dialBench(addr, auth); err != nil {
				return err
			}
		}
		c.w.WriteString("MAIL FROM:<bench@ifaxin.com>\r\nRCPT TO:<sink@example.com>\r\nDATA\r\n")
		c.w.Flush()
		if err := c.expect("250", "250", "354"); err != nil {
			return err
		}
		c.w.WriteString(body)
		c.w.WriteString(".\r\n")
		c.w.Flush()
		if err := c.expect("250"); err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
		if !many || i == n-1 {
			c.w.WriteString("QUIT\r\n")
			c.w.Flush()
			c.expect("221")
			c.conn.Close()
			c = nil
		}
	}
	return nil
}

type benchConn struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
}

func dialBench(addr, auth string) (*benchConn, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &benchConn{conn: conn, r: bufio.NewReader(conn), w: bufio.NewWriter(conn)}
	if err := c.expect("220"); err != nil {
		return nil, err
	}
	c.w.WriteString("EHLO bench.test\r\n" + auth)
	c.w.Flush()
	return c, c.expect("250", "235")
}

// expect reads one reply per code and checks each starts with it.
func (c *benchConn) expect(codes ...string) error {
	for _, code := range codes {
		for {
			line, err := c.r.ReadString('\n')
			if err != nil {
				return err
			}
			if !strings.HasPrefix(line, code) {
				return fmt.Errorf("got %q, want %s", line, code)
			}
			if len(line) < 4 || line[3] != '-' {
				break
			}
		}
	}
	return nil
}
