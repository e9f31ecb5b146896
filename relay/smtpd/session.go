package smtpd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

// session is one SMTP connection: the protocol, with the Backend's
// Session deciding what is accepted.
type session struct {
	srv      *Server
	listener Listener
	info     *ConnInfo // the client, its EHLO name and TLS, as the Backend sees them
	backend  Session   // nil until begin, and after a failed one
	log      *slog.Logger

	connMu sync.Mutex // guards conn, which STARTTLS replaces
	conn   net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer

	authed bool
	inMail bool // a MAIL transaction is open
	rcpts  int  // recipients accepted in it
	errors int
}

func newSession(srv *Server, l Listener, conn net.Conn) *session {
	s := &session{srv: srv, listener: l}
	s.log = srv.deps.Log.With("listener", l.Name, "remote", conn.RemoteAddr().String())
	if pc, ok := conn.(*proxiedConn); ok {
		s.log = s.log.With("proxy", pc.proxy.String())
	}
	s.info = &ConnInfo{Listener: l.Name, Hostname: srv.cfg.Hostname, Remote: conn.RemoteAddr(), Log: s.log}
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
	defer s.close()
	if s.listener.ImplicitTLS && !s.startTLS() {
		return
	}
	if !s.begin() {
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

func (s *session) close() {
	// The last reply first: a slow Logout must not hold back a 221 or 421.
	s.bw.Flush()
	if s.backend != nil {
		s.backend.Logout()
	}
	s.connMu.Lock()
	s.conn.Close()
	s.connMu.Unlock()
}

// begin starts the Backend's side of the session, ending the one before
// if any; false means the Backend refused and the session is over.
func (s *session) begin() bool {
	s.endBackend()
	s.inMail, s.rcpts = false, 0
	b, err := s.srv.deps.Backend.NewSession(s.info)
	if err != nil {
		s.log.Info("backend refused the session", "err", err)
		s.reply(replyOf(err, ReplyUnavailable.With(s.srv.cfg.Hostname)))
		return false
	}
	s.backend = b
	return true
}

// endBackend logs out of the Backend's session, if there is one.
func (s *session) endBackend() {
	if s.backend != nil {
		s.backend.Logout()
		s.backend = nil
	}
}

// refused answers a Backend's refusal, and reports whether the session goes
// on. Refusals are the Backend's decisions, not client errors: they do not
// count towards MaxErrors.
func (s *session) refused(err error) bool {
	if _, ok := errors.AsType[*Error](err); !ok {
		s.log.Error("backend failed", "err", err)
	}
	r := replyOf(err, ReplyTryLater)
	s.reply(r)
	return !ends(r)
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
	if s.srv.draining.Load() && !s.inMail && verb != "QUIT" {
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
	s.inMail, s.rcpts = false, 0
	s.backend.Reset()
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
	s.info.Helo = name
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

// capabilities are the EHLO keywords of the contract, in its order.
func (s *session) capabilities() []string {
	caps := []string{"PIPELINING", "8BITMIME", fmt.Sprintf("SIZE %d", s.srv.cfg.MaxMessageBytes)}
	if s.srv.cfg.TLS != nil && !s.info.TLS {
		caps = append(caps, "STARTTLS")
	}
	caps = append(caps, "ENHANCEDSTATUSCODES")
	if s.authAllowed() {
		caps = append(caps, "AUTH LOGIN PLAIN")
	}
	return caps
}

func (s *session) authAllowed() bool {
	return s.info.TLS || s.listener.AllowAuthWithoutTLS
}

func (s *session) cmdStartTLS(arg string) bool {
	switch {
	case arg != "":
		return s.protocolError(ReplyNoParams)
	case s.info.TLS:
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
	s.info.Helo, s.authed = "", false
	return s.begin()
}

// startTLS runs the server handshake on the current connection.
func (s *session) startTLS() bool {
	s.connMu.Lock()
	raw := s.conn
	s.connMu.Unlock()
	// The session before TLS ends before its connection info says TLS:
	// a Backend that records its sessions' security sees it as it was.
	s.endBackend()
	tlsConn := tls.Server(raw, s.srv.cfg.TLS)
	ctx, cancel := context.WithTimeout(s.srv.ctx, 30*time.Second)
	defer cancel()
	if err := tlsConn.HandshakeContext(ctx); err != nil {
		s.srv.deps.Metrics.tlsFailures.WithLabelValues(s.listener.Name).Inc()
		s.log.Debug("TLS handshake failed", "err", err)
		return false
	}
	s.info.TLS = true
	s.info.TLSVersion = strings.Replace(tls.VersionName(tlsConn.ConnectionState().Version), "TLS ", "TLSv", 1)
	s.setConn(tlsConn)
	return true
}

func (s *session) cmdMail(arg string) bool {
	switch {
	case s.info.Helo == "":
		return s.protocolError(ReplyHeloFirst)
	case !s.authed:
		// A submission server: nobody submits without logging in.
		return s.protocolError(ReplyAuthRequired)
	case s.inMail:
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
	if err := s.backend.Mail(addr, MailOptions{Size: p.size}); err != nil {
		return s.refused(err)
	}
	s.inMail = true
	s.reply(ReplySenderOK.With(addr))
	return true
}

func (s *session) cmdRcpt(arg string) bool {
	if !s.inMail {
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
	// The server's own cap; the Backend may have a lower one.
	if s.rcpts >= s.srv.cfg.MaxRecipients {
		s.reply(ReplyTooManyRcpts)
		return true
	}
	if err := s.backend.Rcpt(addr); err != nil {
		return s.refused(err)
	}
	s.rcpts++
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
	case !s.inMail:
		return s.protocolError(ReplyNeedMail)
	case s.rcpts == 0:
		return s.protocolError(ReplyNeedRcpt)
	}
	s.reply(ReplyData)
	defer s.resetTransaction()
	s.setDeadline(s.srv.cfg.DataTimeout)
	body := newDataReader(s.br, s.srv.cfg.MaxMessageBytes, s.srv.cfg.MaxLineLength)
	id, err := s.backend.Data(s.srv.ctx, body)
	whole := body.handedOutWhole()
	// A body cut off by the connection gets no reply, whatever the
	// Backend made of it: nothing was acknowledged, the client retries.
	if readErr := body.finish(); readErr != nil {
		s.readFailed(readErr)
		return false
	}
	if err != nil {
		return s.refused(err)
	}
	if !whole {
		// The Backend broke its contract: 250 would acknowledge a message
		// cut short, or one over a limit.
		s.log.Error("backend accepted a body it did not read whole; refusing it", "queue_id", id)
		return s.refused(body.refusalOr(&Error{Reply: ReplyTryLater}))
	}
	s.reply(ReplyQueued.With(id))
	return true
}
