package smtpd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mailfleet/mailfleet/relay/budget"
	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// session is one SMTP connection.
type session struct {
	srv      *Server
	listener Listener
	remote   net.Addr
	log      *slog.Logger

	connMu sync.Mutex // guards conn, which STARTTLS replaces
	conn   net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer

	tls      bool
	helo     string
	identity *credentials.Identity
	from     *string // nil outside a transaction; "" is the null sender
	rcpts    []string
	errors   int
}

func newSession(srv *Server, l Listener, conn net.Conn) *session {
	s := &session{srv: srv, listener: l, remote: conn.RemoteAddr()}
	s.log = srv.deps.Log.With("listener", l.Name, "remote", s.remote.String())
	if pc, ok := conn.(*proxiedConn); ok {
		s.log = s.log.With("proxy", pc.proxy.String())
	}
	s.setConn(conn)
	return s
}

// setConn installs conn with fresh buffers. Replies are buffered and flushed
// only when the session is about to wait for the client, which is what makes
// PIPELINING cheap: a pipelined batch gets its replies in one write.
func (s *session) setConn(conn net.Conn) {
	s.connMu.Lock()
	s.conn = conn
	s.connMu.Unlock()
	s.bw = bufio.NewWriterSize(conn, 4096)
	size := max(s.srv.cfg.MaxLineLength+2, maxCommandLine+2, 4096)
	s.br = bufio.NewReaderSize(flushingReader{conn: conn, w: s.bw}, size)
}

// flushingReader flushes pending replies before every read from the network,
// that is, whenever the session has consumed all the client sent.
type flushingReader struct {
	conn net.Conn
	w    *bufio.Writer
}

func (f flushingReader) Read(p []byte) (int, error) {
	if f.w.Buffered() > 0 {
		if err := f.w.Flush(); err != nil {
			return 0, err
		}
	}
	return f.conn.Read(p)
}

// interrupt makes a blocked read or write return now; Shutdown uses it.
func (s *session) interrupt() {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	s.conn.SetDeadline(time.Now())
}

func (s *session) reply(r Reply) {
	s.bw.WriteString(r.String())
	s.bw.Write(crlf)
}

func (s *session) serve() {
	defer func() {
		s.bw.Flush()
		s.connMu.Lock()
		s.conn.Close()
		s.connMu.Unlock()
	}()
	if s.listener.ImplicitTLS && !s.startTLS() {
		return
	}
	s.reply(ReplyGreeting.With(s.srv.cfg.Hostname, s.srv.cfg.Banner))
	for {
		line, err := s.readCommand()
		if errors.Is(err, errLineTooLong) {
			if !s.protocolError(ReplyLineTooLong) {
				return
			}
			continue
		}
		if err != nil {
			s.readFailed(err)
			return
		}
		if !s.handle(line) {
			return
		}
	}
}

// readCommand reads one command line within the command timeout. A line over
// the limit is discarded whole and answered with 500.
func (s *session) readCommand() (string, error) {
	s.setDeadline(s.srv.cfg.CommandTimeout)
	line, err := s.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || len(line) > maxCommandLine {
		if errors.Is(err, bufio.ErrBufferFull) {
			if _, err := skipLine(s.br, false); err != nil {
				return "", err
			}
		}
		return "", errLineTooLong
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

var errLineTooLong = errors.New("command line too long")

func (s *session) setDeadline(d time.Duration) {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if !s.srv.closing.Load() {
		s.conn.SetDeadline(time.Now().Add(d))
	}
}

// readFailed answers what can still be answered after a failed read.
func (s *session) readFailed(err error) {
	var netErr net.Error
	switch {
	case s.srv.closing.Load():
		s.finalReply(ReplyShuttingDown.With(s.srv.cfg.Hostname))
	case errors.As(err, &netErr) && netErr.Timeout():
		s.finalReply(ReplyTimeout.With(s.srv.cfg.Hostname))
	}
}

// finalReply writes a last reply on a connection whose deadline may be past.
func (s *session) finalReply(r Reply) {
	s.connMu.Lock()
	s.conn.SetDeadline(time.Now().Add(2 * time.Second))
	s.connMu.Unlock()
	s.reply(r)
}

// handle runs one command and reports whether the session goes on.
func (s *session) handle(line string) bool {
	verb, arg, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	if s.srv.draining.Load() && s.from == nil && verb != "QUIT" {
		// Between messages, a draining relay sends the client to another
		// relay now (RFC 5321 §3.8 allows 421 to any command) rather than
		// keep an idle session, and with it the pod, until the drain ends.
		s.srv.deps.Metrics.refused.WithLabelValues("draining").Inc()
		s.reply(ReplyShuttingDown.With(s.srv.cfg.Hostname))
		return false
	}
	switch verb {
	case "EHLO":
		return s.cmdHelo(arg, true)
	case "HELO":
		return s.cmdHelo(arg, false)
	case "STARTTLS":
		return s.cmdStartTLS(arg)
	case "AUTH":
		return s.cmdAuth(arg)
	case "MAIL":
		return s.cmdMail(arg)
	case "RCPT":
		return s.cmdRcpt(arg)
	case "DATA":
		return s.cmdData(arg)
	case "RSET":
		s.resetTransaction()
		s.reply(ReplyOK)
	case "NOOP":
		s.reply(ReplyOK)
	case "VRFY":
		s.reply(ReplyVrfy)
	case "EXPN":
		s.reply(ReplyExpn)
	case "HELP":
		s.reply(ReplyHelp)
	case "QUIT":
		s.reply(ReplyQuit.With(s.srv.cfg.Hostname))
		return false
	default:
		return s.protocolError(ReplyUnknown)
	}
	return true
}

// protocolError answers a client error and closes the session after too many.
func (s *session) protocolError(r Reply) bool {
	s.reply(r)
	s.errors++
	if s.errors >= s.srv.cfg.MaxErrors {
		s.reply(ReplyTooManyError.With(s.srv.cfg.Hostname))
		return false
	}
	return true
}

func (s *session) resetTransaction() {
	s.from = nil
	s.rcpts = s.rcpts[:0]
}

func (s *session) cmdHelo(arg string, extended bool) bool {
	name := strings.TrimSpace(arg)
	if name == "" {
		return s.protocolError(ReplyHeloSyntax)
	}
	if i := strings.IndexByte(name, ' '); i > 0 {
		name = name[:i]
	}
	// The name is echoed in the reply, logged and stored with each message:
	// whatever the client sent, only printable ASCII of a domain's length
	// goes on.
	name = printableToken(name, maxHeloName)
	s.helo = name
	s.resetTransaction()
	greeting := ReplyHelo.With(s.srv.cfg.Hostname, name)
	if !extended {
		s.reply(greeting)
		return true
	}
	lines := append([]string{greeting.Text}, s.capabilities()...)
	for i, text := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		fmt.Fprintf(s.bw, "250%s%s\r\n", sep, text)
	}
	return true
}

// maxHeloName is the longest EHLO/HELO name kept: a domain's 255 octets.
const maxHeloName = 255

// printableToken replaces every byte outside printable ASCII (control
// characters, DEL, 8-bit) with '?' and cuts s to at most n bytes.
func printableToken(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	b := []byte(s)
	for i, c := range b {
		if c <= ' ' || c >= 0x7f {
			b[i] = '?'
		}
	}
	return string(b)
}

// capabilities are the EHLO keywords of the contract, in its order.
func (s *session) capabilities() []string {
	caps := []string{"PIPELINING", "8BITMIME", fmt.Sprintf("SIZE %d", s.srv.cfg.MaxMessageBytes)}
	if s.srv.cfg.TLS != nil && !s.tls {
		caps = append(caps, "STARTTLS")
	}
	caps = append(caps, "ENHANCEDSTATUSCODES")
	if s.authAllowed() {
		caps = append(caps, "AUTH LOGIN PLAIN")
	}
	return caps
}

func (s *session) authAllowed() bool {
	return s.tls || s.listener.AllowAuthWithoutTLS
}

func (s *session) cmdStartTLS(arg string) bool {
	switch {
	case arg != "":
		return s.protocolError(ReplyNoParams)
	case s.tls:
		return s.protocolError(ReplyTLSActive)
	case s.srv.cfg.TLS == nil:
		return s.protocolError(ReplyTLSUnavailable)
	}
	s.reply(ReplyStartTLS)
	if err := s.bw.Flush(); err != nil {
		return false
	}
	// Anything the client pipelined behind STARTTLS was sent in the clear and
	// may have been injected by a man in the middle (CVE-2011-0411): drop it.
	s.br.Discard(s.br.Buffered())
	if !s.startTLS() {
		return false
	}
	// RFC 3207 §4.2: the session starts over, without EHLO or AUTH.
	s.helo, s.identity = "", nil
	s.resetTransaction()
	return true
}

// startTLS runs the server handshake on the current connection.
func (s *session) startTLS() bool {
	s.connMu.Lock()
	raw := s.conn
	s.connMu.Unlock()
	tlsConn := tls.Server(raw, s.srv.cfg.TLS)
	ctx, cancel := context.WithTimeout(s.srv.ctx, 30*time.Second)
	defer cancel()
	if err := tlsConn.HandshakeContext(ctx); err != nil {
		s.srv.deps.Metrics.tlsFailures.WithLabelValues(s.listener.Name).Inc()
		s.log.Debug("TLS handshake failed", "err", err)
		return false
	}
	s.tls = true
	s.setConn(tlsConn)
	return true
}

func (s *session) cmdMail(arg string) bool {
	switch {
	case s.helo == "":
		return s.protocolError(ReplyHeloFirst)
	case s.identity == nil:
		return s.protocolError(ReplyAuthRequired)
	case s.from != nil:
		return s.protocolError(ReplyNestedMail)
	}
	rest, ok := cutPrefixFold(arg, "FROM:")
	if !ok {
		return s.protocolError(ReplyMailSyntax)
	}
	addr, params, ok := parsePath(rest)
	if !ok {
		return s.protocolError(ReplyBadAddress)
	}
	p, bad, ok := parseMailParams(params)
	if !ok {
		return s.protocolError(ReplyParam.With(bad))
	}
	if p.size > s.srv.cfg.MaxMessageBytes {
		s.reply(ReplyTooBig)
		return true
	}
	if !s.senderAllowed(addr) {
		s.srv.deps.Metrics.rejected(s.identity.APIUser, s.identity.LabelID, reasonSenderNotAllowed)
		s.reply(ReplySenderNotAllowed.With(addr))
		return true
	}
	s.from = &addr
	s.reply(ReplySenderOK.With(addr))
	return true
}

// senderAllowed decides on the domain the parser found, never on a second
// reading of the raw address.
func (s *session) senderAllowed(addr string) bool {
	mb, ok := parseMailbox(addr)
	if !ok {
		return s.identity.SenderDomainAllowed("") // the null sender
	}
	return s.identity.SenderDomainAllowed(mb.domain)
}

func (s *session) cmdRcpt(arg string) bool {
	if s.from == nil {
		return s.protocolError(ReplyNeedMail)
	}
	rest, ok := cutPrefixFold(arg, "TO:")
	if !ok {
		return s.protocolError(ReplyRcptSyntax)
	}
	addr, params, ok := parsePath(rest)
	if !ok || addr == "" {
		return s.protocolError(ReplyBadRecipient)
	}
	if len(params) > 0 {
		return s.protocolError(ReplyParam.With(params[0]))
	}
	if len(s.rcpts) >= min(s.srv.cfg.MaxRecipients, s.identity.MaxRecipients) {
		s.reply(ReplyTooManyRcpts)
		return true
	}
	s.rcpts = append(s.rcpts, addr)
	s.reply(ReplyRecipientOK.With(addr))
	return true
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return "", false
	}
	return s[len(prefix):], true
}

func (s *session) cmdData(arg string) bool {
	switch {
	case arg != "":
		return s.protocolError(ReplyNoParams)
	case s.from == nil:
		return s.protocolError(ReplyNeedMail)
	case len(s.rcpts) == 0:
		return s.protocolError(ReplyNeedRcpt)
	}
	s.reply(ReplyData)
	defer s.resetTransaction()
	env := s.envelope()
	reply, err := s.receive(env)
	if err != nil {
		s.readFailed(err)
		return false
	}
	s.reply(reply)
	return true
}

func (s *session) envelope() spool.Envelope {
	return spool.Envelope{
		ID:         s.srv.deps.IDs.Next(),
		APIUser:    s.identity.APIUser,
		LabelID:    s.identity.LabelID,
		From:       *s.from,
		To:         append([]string(nil), s.rcpts...),
		ReceivedAt: time.Now().UTC(),
		RemoteAddr: s.remote.String(),
		Helo:       s.helo,
		TLS:        s.tls,
	}
}

// receive reads the body into the spool and decides the reply. Every path
// that does not end in Commit aborts the spooled copy, so only a 250 leaves a
// message behind. A non-nil error means the connection failed mid-body.
func (s *session) receive(env spool.Envelope) (Reply, error) {
	m, user, label := s.srv.deps.Metrics, env.APIUser, env.LabelID
	ctx := s.srv.ctx
	w, err := s.srv.deps.Spool.Begin(ctx, env)
	if err != nil {
		s.log.Error("spool unavailable", "id", env.ID, "err", err)
		w = discardWriter{}
	}
	s.setDeadline(s.srv.cfg.DataTimeout)
	header := &headerCapture{w: w}
	res, readErr := readData(s.br, header, s.srv.cfg.MaxMessageBytes, s.srv.cfg.MaxLineLength)
	reject := func(r Reply, reason string) (Reply, error) {
		w.Abort()
		m.rejected(user, label, reason)
		return r, readErr
	}
	switch {
	case readErr != nil:
		return reject(Reply{}, reasonInterrupted)
	case err != nil || res.writeErr != nil:
		if res.writeErr != nil {
			s.log.Error("spool write failed", "id", env.ID, "err", res.writeErr)
		}
		return reject(ReplyQueueDown, reasonQueueDown)
	case res.tooBig:
		return reject(ReplyTooBig, reasonTooBig)
	case res.tooLong:
		return reject(ReplyDataLineLong.With(s.srv.cfg.MaxLineLength), reasonLineTooLong)
	}
	if r, ok := s.headerFromAllowed(header.bytes()); !ok {
		return reject(r, reasonSenderNotAllowed)
	}
	spend := budget.Request{APIUser: user, LabelID: label, Limit: s.identity.BudgetPerMinute, Hits: len(env.To)}
	switch s.srv.deps.Budget.Take(ctx, spend) {
	case budget.OverLimit:
		return reject(ReplyFrequency, reasonOverBudget)
	case budget.Unavailable:
		return reject(ReplyBudgetDown, reasonBudgetDown)
	}
	if err := w.Commit(ctx); err != nil {
		s.log.Error("spool commit failed", "id", env.ID, "err", err)
		return reject(ReplyQueueDown, reasonQueueDown)
	}
	m.accepted(user, label, res.size)
	s.log.Info("message queued", "id", env.ID, "account", user, "label", label,
		"recipients", len(env.To), "bytes", res.size, "tls", s.tls)
	return ReplyQueued.With(env.ID), nil
}

// discardWriter stands in for a spool that could not start a message, so the
// body is still read to its end and the session stays in step.
type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error)  { return len(p), nil }
func (discardWriter) Commit(context.Context) error { return os.ErrInvalid }
func (discardWriter) Abort() error                 { return nil }
