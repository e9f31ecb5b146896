package httpapi_test

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"net"
	"strings"
	"testing"
	"time"
)

// smtpClient speaks SMTP line by line to the relay's SMTP door, after
// STARTTLS.
type smtpClient struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

func dialSMTP(t testing.TB, r *relay) *smtpClient {
	t.Helper()
	conn, err := net.Dial("tcp", r.smtp.Addr("submission").String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &smtpClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.reply()
	c.expect("EHLO client.test", "250")
	c.expect("STARTTLS", "220")
	tc := tls.Client(conn, &tls.Config{RootCAs: r.caPool, ServerName: "localhost"})
	c.conn, c.r = tc, bufio.NewReader(tc)
	c.expect("EHLO client.test", "250")
	return c
}

// reply reads one reply, multi-line ones whole, and returns its last line.
func (c *smtpClient) reply() string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("read reply: %v", err)
		}
		if len(line) < 4 || line[3] != '-' {
			return strings.TrimRight(line, "\r\n")
		}
	}
}

func (c *smtpClient) cmd(line string) string {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(line + "\r\n")); err != nil {
		c.t.Fatal(err)
	}
	return c.reply()
}

func (c *smtpClient) expect(line, prefix string) string {
	c.t.Helper()
	got := c.cmd(line)
	if !strings.HasPrefix(got, prefix) {
		c.t.Fatalf("%q: got %q, want %s", line, got, prefix)
	}
	return got
}

// send submits one message and returns the reply to its end of data.
func (c *smtpClient) send(from string, to []string, body string) string {
	c.t.Helper()
	c.expect("MAIL FROM:<"+from+">", "250")
	for _, rcpt := range to {
		c.expect("RCPT TO:<"+rcpt+">", "250")
	}
	c.expect("DATA", "354")
	return c.cmd(body + "\r\n.")
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
