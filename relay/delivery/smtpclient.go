package delivery

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"
)

// The client is our own rather than go-smtp's because a pooled connection
// needs RSET without a second EHLO (go-smtp's Reset forces one, and some
// servers forget AUTH on EHLO), pipelined MAIL/RCPT/DATA (RFC 2920), enhanced
// codes from success replies too, and per-write deadlines while DATA streams.

const (
	// maxReplyLine bounds one reply line; RFC 5321 §4.5.3.1.5 says 512,
	// servers send longer texts, and a hostile one could send endless bytes.
	maxReplyLine = 4096
	// maxReplyLines bounds a multi-line reply (an EHLO lists extensions).
	maxReplyLines = 128
)

// reply is one SMTP reply.
type reply struct {
	Code int
	// Enhanced is the RFC 3463 code from the reply's first line, or one
	// derived from Code's class when the server sent none.
	Enhanced string
	// Text is the reply text without codes, its lines joined by "; ".
	Text string
}

func (r reply) String() string {
	return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text)
}

// replyError is a reply that refused a command.
type replyError struct {
	cmd   string
	reply reply
}

func (e *replyError) Error() string {
	return fmt.Sprintf("%s: server said %s", e.cmd, e.reply)
}

// client is one SMTP connection.
type client struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	ext  map[string]string
	// host is the name the server is known by (RemoteMTA), addr where it is.
	host, addr string
	tls        bool
	created    time.Time
	lastUsed   time.Time
	cmdTimeout time.Duration
	// dataTimeout bounds each write while the body streams.
	dataTimeout time.Duration
}

// dialParams say how to open a session with one server.
type dialParams struct {
	host, addr  string
	localName   string
	tls         TLSMode
	tlsConfig   *tls.Config
	username    string
	password    string
	authNoTLS   bool
	dialTimeout time.Duration
	cmdTimeout  time.Duration
	dataTimeout time.Duration
	dialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	forcePlain  bool // opportunistic retry after a failed handshake
	// onOpened and onClosed count TCP connections for the metrics; the
	// pool calls onClosed for sessions dial returned.
	onOpened, onClosed func()
}

// sessionError is a failure to set up a session: nothing was sent, so every
// recipient is deferred (even on a 5xx greeting: that is about the server,
// not the message, and another try or another MX may work).
type sessionError struct {
	stage string
	err   error
	// tlsFailed marks a failed STARTTLS handshake, which opportunistic
	// mode retries without TLS.
	tlsFailed bool
}

func (e *sessionError) Error() string { return e.stage + ": " + e.err.Error() }
func (e *sessionError) Unwrap() error { return e.err }

// dial opens a session: connect, greeting, EHLO, TLS as p.tls says, AUTH.
func dial(ctx context.Context, p dialParams) (*client, error) {
	dctx, cancel := context.WithTimeout(ctx, p.dialTimeout)
	defer cancel()
	raw, err := p.dialContext(dctx, "tcp", p.addr)
	if err != nil {
		return nil, &sessionError{stage: "connect to " + p.addr, err: err}
	}
	p.onOpened()
	c := &client{
		conn: raw, host: p.host, addr: p.addr, created: time.Now(),
		cmdTimeout: p.cmdTimeout, dataTimeout: p.dataTimeout,
	}
	// A deadline in the past is how a cancelled ctx interrupts blocked I/O.
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := c.setup(ctx, p); err != nil {
		raw.Close()
		p.onClosed()
		return nil, err
	}
	c.lastUsed = time.Now()
	return c, nil
}

func (c *client) setup(ctx context.Context, p dialParams) error {
	if p.tls == TLSImplicit {
		tc := tls.Client(c.conn, p.tlsConfig)
		hctx, cancel := context.WithTimeout(ctx, c.cmdTimeout)
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			return &sessionError{stage: "TLS handshake with " + c.addr, err: err, tlsFailed: true}
		}
		c.conn, c.tls = tc, true
	}
	c.setConn(c.conn)
	greeting, err := c.readReplyTimeout()
	if err != nil {
		return &sessionError{stage: "greeting from " + c.addr, err: err}
	}
	if greeting.Code != 220 {
		return &sessionError{stage: "greeting from " + c.addr, err: &replyError{cmd: "connect", reply: greeting}}
	}
	if err := c.hello(p.localName); err != nil {
		return &sessionError{stage: "EHLO to " + c.addr, err: err}
	}
	if !c.tls && p.tls != TLSNone && !p.forcePlain {
		if _, offered := c.ext["STARTTLS"]; offered {
			if err := c.startTLS(ctx, p.tlsConfig); err != nil {
				return &sessionError{stage: "STARTTLS with " + c.addr, err: err, tlsFailed: true}
			}
			if err := c.hello(p.localName); err != nil {
				return &sessionError{stage: "EHLO after STARTTLS to " + c.addr, err: err}
			}
		} else if p.tls == TLSRequired {
			return &sessionError{stage: "STARTTLS with " + c.addr, err: errors.New("TLS is required but the server does not offer STARTTLS"), tlsFailed: false}
		}
	}
	if p.username != "" {
		if !c.tls && !p.authNoTLS {
			return &sessionError{stage: "AUTH to " + c.addr, err: errors.New("refusing to send credentials without TLS")}
		}
		if err := c.auth(p.username, p.password); err != nil {
			return &sessionError{stage: "AUTH to " + c.addr, err: err}
		}
	}
	return nil
}

func (c *client) setConn(conn net.Conn) {
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
func (c *client) hello(name string) error {
	r, err := c.cmd("EHLO " + name)
	if err != nil {
		return err
	}
	if r.Code == 250 {
		c.ext = parseExtensions(r)
		return nil
	}
	if r.Code/100 != 5 {
		return &replyError{cmd: "EHLO", reply: r}
	}
	r, err = c.cmd("HELO " + name)
	if err != nil {
		return err
	}
	if r.Code != 250 {
		return &replyError{cmd: "HELO", reply: r}
	}
	c.ext = map[string]string{}
	return nil
}

// parseExtensions reads the EHLO reply's lines after the first: keyword and
// parameters.
func parseExtensions(r reply) map[string]string {
	ext := make(map[string]string)
	lines := strings.Split(r.Text, "\n")
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(l), " ")
		if k != "" {
			ext[strings.ToUpper(k)] = v
		}
	}
	return ext
}

func (c *client) startTLS(ctx context.Context, cfg *tls.Config) error {
	r, err := c.cmd("STARTTLS")
	if err != nil {
		return err
	}
	if r.Code != 220 {
		return &replyError{cmd: "STARTTLS", reply: r}
	}
	if c.br.Buffered() > 0 {
		// Bytes after the 220 before the handshake are an injection
		// attempt (CVE-2011-0411 class) or a broken server.
		return errors.New("server sent data after its STARTTLS reply")
	}
	tc := tls.Client(c.conn, cfg)
	hctx, cancel := context.WithTimeout(ctx, c.cmdTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return err
	}
	c.setConn(tc)
	c.tls = true
	c.ext = nil
	return nil
}

// auth logs in with PLAIN when offered, else LOGIN.
func (c *client) auth(user, pass string) error {
	mechs := strings.Fields(strings.ToUpper(c.ext["AUTH"]))
	has := func(m string) bool {
		for _, x := range mechs {
			if x == m {
				return true
			}
		}
		return false
	}
	enc := base64.StdEncoding.EncodeToString
	switch {
	case has("PLAIN"):
		r, err := c.cmd("AUTH PLAIN " + enc([]byte("\x00"+user+"\x00"+pass)))
		if err != nil {
			return err
		}
		if r.Code != 235 {
			return &replyError{cmd: "AUTH PLAIN", reply: r}
		}
		return nil
	case has("LOGIN"):
		r, err := c.cmd("AUTH LOGIN " + enc([]byte(user)))
		if err != nil {
			return err
		}
		if r.Code == 334 {
			r, err = c.cmd(enc([]byte(pass)))
			if err != nil {
				return err
			}
		}
		if r.Code != 235 {
			return &replyError{cmd: "AUTH LOGIN", reply: r}
		}
		return nil
	}
	return fmt.Errorf("server offers no AUTH mechanism we speak (AUTH %q)", c.ext["AUTH"])
}

// cmd sends one command line and reads its reply.
func (c *client) cmd(line string) (reply, error) {
	if err := c.send(line); err != nil {
		return reply{}, err
	}
	if err := c.flush(); err != nil {
		return reply{}, err
	}
	return c.readReplyTimeout()
}

// send buffers a command line; flush sends what is buffered.
func (c *client) send(line string) error {
	if strings.ContainsAny(line, "\r\n") {
		return errors.New("command contains a line break")
	}
	c.bw.WriteString(line)
	_, err := c.bw.WriteString("\r\n")
	return err
}

func (c *client) flush() error {
	return c.bw.Flush()
}

func (c *client) readReplyTimeout() (reply, error) {
	if err := c.conn.SetReadDeadline(time.Now().Add(c.cmdTimeout)); err != nil {
		return reply{}, err
	}
	return readReply(c.br)
}

// readReply reads one possibly multi-line reply.
func readReply(br *bufio.Reader) (reply, error) {
	var r reply
	var lines []string
	for i := 0; ; i++ {
		if i >= maxReplyLines {
			return reply{}, errors.New("reply has too many lines")
		}
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) || len(line) > maxReplyLine {
			return reply{}, errors.New("reply line too long")
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return reply{}, fmt.Errorf("read reply: %w", err)
		}
		s := strings.TrimRight(string(line), "\r\n")
		if len(s) < 3 {
			return reply{}, fmt.Errorf("malformed reply %q", s)
		}
		code, err := strconv.Atoi(s[:3])
		if err != nil || code < 200 || code > 599 {
			return reply{}, fmt.Errorf("malformed reply %q", s)
		}
		if i == 0 {
			r.Code = code
		} else if code != r.Code {
			return reply{}, fmt.Errorf("reply changes code mid-way: %q", s)
		}
		more := len(s) > 3 && s[3] == '-'
		if len(s) > 3 && s[3] != '-' && s[3] != ' ' {
			return reply{}, fmt.Errorf("malformed reply %q", s)
		}
		text := ""
		if len(s) > 4 {
			text = s[4:]
		}
		lines = append(lines, text)
		if !more {
			break
		}
	}
	r.Enhanced, lines[0] = splitEnhanced(r.Code, lines[0])
	// Each continuation line repeats the enhanced code (RFC 2034 §4).
	for i := 1; i < len(lines); i++ {
		if e, rest := splitEnhanced(r.Code, lines[i]); e == r.Enhanced {
			lines[i] = rest
		}
	}
	if r.Enhanced == "" {
		r.Enhanced = fmt.Sprintf("%d.0.0", r.Code/100)
	}
	r.Text = strings.Join(lines, "\n")
	return r, nil
}

// splitEnhanced takes an RFC 3463 code off the front of text when there is
// one whose class matches code's.
func splitEnhanced(code int, text string) (string, string) {
	word, rest, _ := strings.Cut(text, " ")
	parts := strings.Split(word, ".")
	if len(parts) != 3 || parts[0] != strconv.Itoa(code/100) {
		return "", text
	}
	for _, p := range parts[1:] {
		if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 999 || len(p) > 3 {
			return "", text
		}
	}
	return word, rest
}

// textOneLine is a reply's text on one line, for Result.Text and logs.
func textOneLine(r reply) string {
	return strings.ReplaceAll(r.Text, "\n", "; ")
}

// quit ends the session politely and closes the connection; errors do not
// matter any more.
func (c *client) quit() {
	c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if c.send("QUIT") == nil && c.flush() == nil {
		readReply(c.br)
	}
	c.conn.Close()
}

// dotWriter returns a writer that dot-stuffs the body and converts bare LF
// to CRLF; closing it ends DATA with ".\r\n" (textproto's DotWriter, over our
// buffered, deadline-renewing writer).
func (c *client) dotWriter() io.WriteCloser {
	return textproto.NewWriter(c.bw).DotWriter()
}
