// Package smtpclient is the relay's outbound SMTP client: it opens sessions
// with a next hop (connect, EHLO, STARTTLS, AUTH), runs MAIL/RCPT/DATA
// transactions on them, and pools them between messages. Which server to
// ask, and what a reply means for a message, is its callers' to decide.
package smtpclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"
)

// The client is our own rather than go-smtp's because a pooled connection
// needs RSET without a second EHLO (go-smtp's Reset forces one, and some
// servers forget AUTH on EHLO), pipelined MAIL/RCPT/DATA (RFC 2920), enhanced
// codes from success replies too, and per-write deadlines while DATA streams.

// Params say how to open a session with one server. The timeouts are
// required; the rest may be left zero.
type Params struct {
	// Host is the name the server is known by (reported as the remote
	// MTA), Addr where it listens ("host:port").
	Host, Addr string
	// LocalName is this relay's name, sent in EHLO.
	LocalName string
	TLS       TLSMode
	// ServerName is the name the certificate must carry; RootCAs the
	// authorities to trust (nil: the system's).
	ServerName string
	RootCAs    *x509.CertPool
	// Username and Password, when Username is set, log in with AUTH PLAIN
	// or LOGIN, only over TLS unless AllowAuthWithoutTLS.
	Username, Password  string
	AllowAuthWithoutTLS bool
	DialTimeout         time.Duration
	CommandTimeout      time.Duration
	// DataTimeout bounds each write while the body streams.
	DataTimeout time.Duration
	// Dial opens connections (default: a net.Dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnOpened and OnClosed are called once per TCP connection, for the
	// metrics: OnClosed when Close or Quit ends it, or a failed Dial does.
	OnOpened, OnClosed func()
	// OnPlainRetry hears why an opportunistic TLS handshake failed, just
	// before the session is tried again without TLS.
	OnPlainRetry func(error)
}

// Client is one SMTP session.
type Client struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	ext  map[string]string
	// host is the name the server is known by, addr where it is.
	host, addr string
	tls        bool
	tlsState   TLSState
	created    time.Time
	lastUsed   time.Time
	cmdTimeout time.Duration
	// dataTimeout bounds each write while the body streams.
	dataTimeout time.Duration
	onClosed    func()
}

// sessionError is a failure to set up a session: nothing was sent, so a
// caller may try again or another server (even after a 5xx greeting: that
// is about the server, not the message).
type sessionError struct {
	stage string
	err   error
	// tlsFailed marks a failed TLS handshake, which opportunistic mode
	// retries without TLS.
	tlsFailed bool
}

func (e *sessionError) Error() string { return e.stage + ": " + e.err.Error() }
func (e *sessionError) Unwrap() error { return e.err }

// Dial opens a session: connect, greeting, EHLO, TLS as p.TLS says, AUTH.
// In opportunistic mode a failed handshake is retried once in plain text,
// as the alternative is not delivering at all. The error of a refused
// greeting, EHLO or AUTH wraps a *ReplyError.
func Dial(ctx context.Context, p Params) (*Client, error) {
	if p.Dial == nil {
		p.Dial = (&net.Dialer{}).DialContext
	}
	c, err := dial(ctx, p, false)
	var se *sessionError
	if err != nil && p.TLS == TLSOpportunistic && errors.As(err, &se) && se.tlsFailed {
		if p.OnPlainRetry != nil {
			p.OnPlainRetry(err)
		}
		return dial(ctx, p, true)
	}
	return c, err
}

// dial opens one session; forcePlain leaves STARTTLS out.
func dial(ctx context.Context, p Params, forcePlain bool) (*Client, error) {
	dctx, cancel := context.WithTimeout(ctx, p.DialTimeout)
	defer cancel()
	raw, err := p.Dial(dctx, "tcp", p.Addr)
	if err != nil {
		return nil, &sessionError{stage: "connect to " + p.Addr, err: err}
	}
	notify(p.OnOpened)
	c := &Client{
		conn: raw, host: p.Host, addr: p.Addr, created: time.Now(),
		cmdTimeout: p.CommandTimeout, dataTimeout: p.DataTimeout, onClosed: p.OnClosed,
	}
	// A deadline in the past is how a cancelled ctx interrupts blocked I/O.
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := c.setup(ctx, p, forcePlain); err != nil {
		// The raw connection: a TLS one would first try to say goodbye.
		raw.Close()
		notify(p.OnClosed)
		return nil, err
	}
	c.lastUsed = time.Now()
	return c, nil
}

func notify(f func()) {
	if f != nil {
		f()
	}
}

func (c *Client) setup(ctx context.Context, p Params, forcePlain bool) error {
	cfg := tlsConfig(p.TLS, p.ServerName, p.RootCAs)
	if p.TLS == TLSImplicit {
		if err := c.handshake(ctx, cfg); err != nil {
			return &sessionError{stage: "TLS handshake with " + c.addr, err: err, tlsFailed: true}
		}
	} else {
		c.setConn(c.conn)
	}
	if err := c.greeting(); err != nil {
		return &sessionError{stage: "greeting from " + c.addr, err: err}
	}
	if err := c.hello(p.LocalName); err != nil {
		return &sessionError{stage: "EHLO to " + c.addr, err: err}
	}
	if !c.tls && p.TLS != TLSNone && !forcePlain {
		if err := c.upgrade(ctx, p, cfg); err != nil {
			return err
		}
	}
	if p.Username == "" {
		return nil
	}
	if !c.tls && !p.AllowAuthWithoutTLS {
		return &sessionError{stage: "AUTH to " + c.addr, err: errors.New("refusing to send credentials without TLS")}
	}
	if err := c.auth(p.Username, p.Password); err != nil {
		return &sessionError{stage: "AUTH to " + c.addr, err: err}
	}
	return nil
}

func (c *Client) greeting() error {
	r, err := c.readReplyTimeout()
	if err != nil {
		return err
	}
	if r.Code != 220 {
		return &ReplyError{Cmd: "connect", Reply: r}
	}
	return nil
}

// upgrade switches to TLS with STARTTLS when the server offers it, and
// fails the session when it does not but p.TLS requires it.
func (c *Client) upgrade(ctx context.Context, p Params, cfg *tls.Config) error {
	if _, offered := c.ext["STARTTLS"]; !offered {
		if p.TLS == TLSRequired || p.TLS == TLSEncrypt {
			return &sessionError{stage: "STARTTLS with " + c.addr, err: errors.New("TLS is required but the server does not offer STARTTLS")}
		}
		return nil
	}
	if err := c.startTLS(ctx, cfg); err != nil {
		return &sessionError{stage: "STARTTLS with " + c.addr, err: err, tlsFailed: true}
	}
	if err := c.hello(p.LocalName); err != nil {
		return &sessionError{stage: "EHLO after STARTTLS to " + c.addr, err: err}
	}
	return nil
}

func (c *Client) setConn(conn net.Conn) {
	c.conn = conn
	c.br = bufio.NewReaderSize(conn, 4096)
	c.bw = bufio.NewWriterSize(&deadlineWriter{conn: conn, timeout: c.dataTimeout}, 64<<10)
}

// deadlineWriter renews the write deadline before each write, so a server
// that stops reading fails the transfer after timeout of no progress instead
// of hanging a worker, while a slow but moving 16 MB transfer goes on.
type deadlineWriter struct {
	conn    net.Conn
	timeout time.Duration
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	if err := d.conn.SetWriteDeadline(time.Now().Add(d.timeout)); err != nil {
		return 0, err
	}
	return d.conn.Write(p)
}

// hello sends EHLO, falling back to HELO for servers that refuse it.
func (c *Client) hello(name string) error {
	r, err := c.cmd("EHLO " + name)
	if err != nil {
		return err
	}
	if r.Code == 250 {
		c.ext = parseExtensions(r)
		return nil
	}
	if r.Code/100 != 5 {
		return &ReplyError{Cmd: "EHLO", Reply: r}
	}
	r, err = c.cmd("HELO " + name)
	if err != nil {
		return err
	}
	if r.Code != 250 {
		return &ReplyError{Cmd: "HELO", Reply: r}
	}
	c.ext = map[string]string{}
	return nil
}

func (c *Client) startTLS(ctx context.Context, cfg *tls.Config) error {
	r, err := c.cmd("STARTTLS")
	if err != nil {
		return err
	}
	if r.Code != 220 {
		return &ReplyError{Cmd: "STARTTLS", Reply: r}
	}
	if c.br.Buffered() > 0 {
		// Bytes after the 220 before the handshake are an injection
		// attempt (CVE-2011-0411 class) or a broken server.
		return errors.New("server sent data after its STARTTLS reply")
	}
	if err := c.handshake(ctx, cfg); err != nil {
		return err
	}
	c.ext = nil
	return nil
}

// handshake runs the TLS handshake on the connection and speaks TLS from
// then on.
func (c *Client) handshake(ctx context.Context, cfg *tls.Config) error {
	tc := tls.Client(c.conn, cfg)
	hctx, cancel := context.WithTimeout(ctx, c.cmdTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return err
	}
	c.setConn(tc)
	c.tls = true
	cs := tc.ConnectionState()
	c.tlsState = TLSState{Version: versionName(cs.Version), Verified: !cfg.InsecureSkipVerify || verified(cs, cfg.ServerName, cfg.RootCAs)}
	return nil
}

// TLS is what protects the session.
func (c *Client) TLS() TLSState { return c.tlsState }

// auth logs in with PLAIN when offered, else LOGIN.
func (c *Client) auth(user, pass string) error {
	mechs := strings.Fields(strings.ToUpper(c.ext["AUTH"]))
	enc := base64.StdEncoding.EncodeToString
	switch {
	case slices.Contains(mechs, "PLAIN"):
		return c.authExchange("AUTH PLAIN", "AUTH PLAIN "+enc([]byte("\x00"+user+"\x00"+pass)))
	case slices.Contains(mechs, "LOGIN"):
		return c.authExchange("AUTH LOGIN", "AUTH LOGIN "+enc([]byte(user)), enc([]byte(pass)))
	}
	return fmt.Errorf("server offers no AUTH mechanism we speak (AUTH %q)", c.ext["AUTH"])
}

// authExchange sends the first line, then each next one while the server
// asks for more (334), and wants 235 at the end.
func (c *Client) authExchange(name, first string, next ...string) error {
	r, err := c.cmd(first)
	for _, line := range next {
		if err != nil || r.Code != 334 {
			break
		}
		r, err = c.cmd(line)
	}
	if err != nil {
		return err
	}
	if r.Code != 235 {
		return &ReplyError{Cmd: name, Reply: r}
	}
	return nil
}

// cmd sends one command line and reads its reply.
func (c *Client) cmd(line string) (Reply, error) {
	if err := c.send(line); err != nil {
		return Reply{}, err
	}
	if err := c.flush(); err != nil {
		return Reply{}, err
	}
	return c.readReplyTimeout()
}

// send buffers a command line; flush sends what is buffered.
func (c *Client) send(line string) error {
	if strings.ContainsAny(line, "\r\n") {
		return errors.New("command contains a line break")
	}
	c.bw.WriteString(line)
	_, err := c.bw.WriteString("\r\n")
	return err
}

func (c *Client) flush() error {
	return c.bw.Flush()
}

func (c *Client) readReplyTimeout() (Reply, error) {
	if err := c.conn.SetReadDeadline(time.Now().Add(c.cmdTimeout)); err != nil {
		return Reply{}, err
	}
	return readReply(c.br)
}

// dotWriter returns a writer that dot-stuffs the body and converts bare LF
// to CRLF; closing it ends DATA with ".\r\n" (see dotWriter), over our
// buffered, deadline-renewing writer.
func (c *Client) dotWriter() io.WriteCloser {
	return newDotWriter(c.bw)
}

// Host is the name the server is known by, as Params.Host gave it.
func (c *Client) Host() string { return c.host }

// Quit ends the session politely and closes the connection; errors do not
// matter any more.
func (c *Client) Quit() {
	c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if c.send("QUIT") == nil && c.flush() == nil {
		if _, err := readReply(c.br); err == nil {
			// The server closes after its 221 (RFC 5321 §4.1.1.10); wait
			// for that, briefly, so that a destination counting this
			// sender's connections has seen this one end before the
			// delivery that follows opens another in its place.
			c.conn.SetReadDeadline(time.Now().Add(time.Second))
			io.Copy(io.Discard, c.br)
		}
	}
	c.Close()
}

// Close drops the connection without QUIT, as for a broken session.
func (c *Client) Close() {
	c.conn.Close()
	notify(c.onClosed)
}
