package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// load is one run of the Go load generator: sessions in parallel, each
// sending messages until the run's count is reached (or, with a rate, until
// ctx ends), one message per session or many.
type load struct {
	srv        *server
	sessions   int
	size       int
	messages   int  // total; 0 with a rate
	onePerConn bool // QUIT and reconnect after every message
	// tokens, when set, paces the run: one token per message.
	tokens <-chan struct{}
}

// loadResult counts what the server answered.
type loadResult struct {
	accepted, refused atomic.Int64
	elapsed           time.Duration

	mu       sync.Mutex
	firstErr error
}

func (r *loadResult) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.firstErr == nil {
		r.firstErr = err
	}
}

func (r *loadResult) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.firstErr
}

// run sends the messages and returns the counts.
func (l load) run(ctx context.Context) *loadResult {
	return l.runInto(ctx, &loadResult{})
}

func (l load) runInto(ctx context.Context, res *loadResult) *loadResult {
	body := messageBody(l.size)
	var claimed atomic.Int64
	take := func() bool {
		if l.tokens != nil {
			select {
			case <-ctx.Done():
				return false
			case _, ok := <-l.tokens:
				return ok
			}
		}
		return claimed.Add(1) <= int64(l.messages)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for range l.sessions {
		wg.Go(func() {
			for ctx.Err() == nil {
				sent, err := l.session(ctx, body, take, res)
				if err != nil && ctx.Err() == nil {
					res.fail(err)
					time.Sleep(100 * time.Millisecond)
				}
				if !sent {
					return
				}
			}
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}

// session opens one connection and sends messages on it while take says
// there are more; it reports whether it sent any (false: the run is over).
func (l load) session(ctx context.Context, body []byte, take func() bool, res *loadResult) (bool, error) {
	if !take() {
		return false, nil
	}
	c, err := dialSMTP(ctx, l.srv)
	if err != nil {
		return true, err
	}
	defer c.close()
	for {
		code, err := c.send(body)
		if err != nil {
			return true, err
		}
		if code == 250 {
			res.accepted.Add(1)
		} else {
			res.refused.Add(1)
		}
		if l.onePerConn || !take() {
			c.quit()
			return true, nil
		}
	}
}

// messageBody is a message of about size bytes with the headers a
// submission server checks.
func messageBody(size int) []byte {
	var b strings.Builder
	b.WriteString("From: app@bench.example\r\nTo: rcpt@sink.example\r\nSubject: bench\r\n" +
		"Message-ID: <bench@bench.example>\r\nDate: Fri, 04 Dec 2026 12:00:00 +0000\r\n\r\n")
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return []byte(b.String())
}

// smtpConn is a client session: EHLO, STARTTLS and AUTH LOGIN where the
// server is set up for them, then MAIL, RCPT and DATA pipelined.
type smtpConn struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
}

func dialSMTP(ctx context.Context, srv *server) (*smtpConn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", srv.addr)
	if err != nil {
		return nil, err
	}
	c := &smtpConn{conn: conn, r: bufio.NewReaderSize(conn, 4096), w: bufio.NewWriterSize(conn, 64<<10)}
	if err := c.open(srv); err != nil {
		conn.Close()
		return nil, fmt.Errorf("%s: %w", srv.name, err)
	}
	return c, nil
}

func (c *smtpConn) open(srv *server) error {
	if _, err := c.expect(220); err != nil {
		return err
	}
	if err := c.cmd(250, "EHLO loader.bench.test"); err != nil {
		return err
	}
	if srv.starttls {
		if err := c.cmd(220, "STARTTLS"); err != nil {
			return err
		}
		tc := tls.Client(c.conn, &tls.Config{ServerName: "127.0.0.1", RootCAs: srv.roots, MinVersion: tls.VersionTLS12})
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("TLS handshake: %w", err)
		}
		c.conn, c.r, c.w = tc, bufio.NewReaderSize(tc, 4096), bufio.NewWriterSize(tc, 64<<10)
		if err := c.cmd(250, "EHLO loader.bench.test"); err != nil {
			return err
		}
	}
	if srv.auth {
		enc := base64.StdEncoding.EncodeToString
		if err := c.cmd(334, "AUTH LOGIN"); err != nil {
			return err
		}
		if err := c.cmd(334, enc([]byte(srv.user))); err != nil {
			return err
		}
		if err := c.cmd(235, enc([]byte(srv.pass))); err != nil {
			return fmt.Errorf("login: %w", err)
		}
	}
	return nil
}

// send runs one transaction and returns the reply code to the data.
func (c *smtpConn) send(body []byte) (int, error) {
	c.w.WriteString("MAIL FROM:<app@bench.example>\r\nRCPT TO:<rcpt@sink.example>\r\nDATA\r\n")
	if err := c.w.Flush(); err != nil {
		return 0, err
	}
	// Pipelined: all three replies come whatever the first says.
	var codes [3]int
	for i := range codes {
		code, err := c.reply()
		if err != nil {
			return 0, err
		}
		codes[i] = code
	}
	if codes[2] != 354 {
		c.cmd(250, "RSET")
		for _, code := range codes {
			if code >= 400 {
				return code, nil
			}
		}
		return codes[2], nil
	}
	c.w.Write(body)
	c.w.WriteString(".\r\n")
	if err := c.w.Flush(); err != nil {
		return 0, err
	}
	code, err := c.reply()
	return code, err
}

func (c *smtpConn) cmd(want int, line string) error {
	c.w.WriteString(line + "\r\n")
	if err := c.w.Flush(); err != nil {
		return err
	}
	_, err := c.expect(want)
	return err
}

// expect reads a reply; a code other than want is an error that still
// returns the code.
func (c *smtpConn) expect(want int) (int, error) {
	code, err := c.reply()
	if err == nil && code != want {
		err = fmt.Errorf("reply %d, want %d", code, want)
	}
	return code, err
}

// reply reads a (multi-line) reply and returns its code.
func (c *smtpConn) reply() (int, error) {
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return 0, err
		}
		if len(line) < 4 {
			return 0, errors.New("short reply line")
		}
		if line[3] == '-' {
			continue
		}
		var code int
		if _, err := fmt.Sscanf(line[:3], "%d", &code); err != nil {
			return 0, fmt.Errorf("reply %q: %w", line, err)
		}
		return code, nil
	}
}

func (c *smtpConn) quit() {
	c.w.WriteString("QUIT\r\n")
	c.w.Flush()
	c.reply()
}

func (c *smtpConn) close() { c.conn.Close() }

// pace yields rate tokens a second until ctx ends, then closes the channel.
// Tokens are released every millisecond, so a burst never exceeds what a
// millisecond's share allows beyond the buffer.
func pace(ctx context.Context, rate int) <-chan struct{} {
	ch := make(chan struct{}, rate)
	go func() {
		defer close(ch)
		start := time.Now()
		sent := 0
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				due := int(now.Sub(start).Seconds() * float64(rate))
				for ; sent < due; sent++ {
					select {
					case ch <- struct{}{}:
					default: // the loader is behind: the token is lost, not queued
					}
				}
			}
		}
	}()
	return ch
}
