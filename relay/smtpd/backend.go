package smtpd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
)

// Backend decides what the server does with a session: who may log in,
// which senders and recipients are taken, where a message goes. The engine
// (this package) speaks the protocol around it: parsing, replies,
// PIPELINING, TLS, limits. The shape follows go-smtp's Backend.
type Backend interface {
	// NewSession starts the backend's side of a session: when a client is
	// admitted, and again after STARTTLS, which starts the session over
	// (RFC 3207 §4.2). An error refuses the session: its reply is sent
	// and the connection closed.
	NewSession(c *ConnInfo) (Session, error)
}

// Session is one client's session as a Backend sees it. The engine calls it
// from the session's goroutine and in protocol order only: MAIL after a
// successful Auth, RCPT within a transaction, DATA with a recipient.
//
// A method refuses by returning an *Error, whose reply the engine sends as
// it is; a 421 reply ends the session too (RFC 5321 §3.8). An error that
// carries no reply is a failure of the backend's own and is answered with
// ReplyTryLater.
type Session interface {
	// AuthStart is asked when the client begins AUTH, whatever mechanism
	// it names and before any credential crosses the network, so that a
	// client the backend has shut out is told at once.
	AuthStart(mechanism string) error
	// Auth checks the username and password an AUTH exchange decoded. An
	// error without a reply counts, as for go-sasl, as a response the
	// mechanism could not use (501 5.5.2).
	Auth(mechanism, username, password string) error
	// Mail opens a transaction for the envelope sender from, a valid RFC
	// 5321 mailbox (see ParseMailbox) or "" for the null sender.
	Mail(from string, opts MailOptions) error
	// Rcpt adds a recipient, a valid RFC 5321 mailbox. RCPT takes no
	// parameters: the engine refuses any.
	Rcpt(to string) error
	// Data receives the message body, unstuffed and with CRLF line ends,
	// and returns the message's queue id once the message is durable: the
	// engine acknowledges it (250 ... #id#Queued) on that word alone.
	//
	// r ends with io.EOF at the end of data. Any other error from r means
	// the message must not be kept: Data returns it (wrapped or not). It is
	// an *Error when the engine refused the body (ErrMessageTooBig,
	// ErrMessageLineTooLong) after reading it to its end; otherwise the
	// connection failed and nobody will read a reply. Whatever of r Data
	// leaves unread, the engine discards, so the session stays in step.
	//
	// Data returns nil only after reading r to io.EOF: the engine refuses
	// to acknowledge a body it was not, since the client would hear 250
	// for a message cut short. r must not be used after Data returns.
	Data(ctx context.Context, r io.Reader) (queueID string, err error)
	// Reset ends the transaction under way, if any (RSET, EHLO, the end
	// of DATA).
	Reset()
	// Logout ends the session; no method is called after it.
	Logout()
}

// MailOptions are the MAIL FROM parameters the engine accepted.
type MailOptions struct {
	// Size is the declared SIZE, 0 when absent; the engine has already
	// refused one over Config.MaxMessageBytes.
	Size int64
}

// ErrAuthThrottled is what a Backend wraps in the *Error it returns from
// AuthStart or Auth when it shuts an address out after too many failures:
// the engine counts that login as throttled rather than failed.
var ErrAuthThrottled = errors.New("authentication throttled")

// ConnInfo is what a Backend knows of the connection a session runs on.
// The engine owns it and keeps Helo current; a Backend only reads it.
type ConnInfo struct {
	// Listener is the name of the listener the client came in on.
	Listener string
	// Hostname is the server's, for replies that name it.
	Hostname string
	// Remote is the client: the one a PROXY header names, on a listener
	// behind a load balancer.
	Remote net.Addr
	// TLS reports whether the session is encrypted, TLSVersion with what
	// ("TLSv1.3"), for the Received field.
	TLS        bool
	TLSVersion string
	// Helo is the name the client gave in its last EHLO or HELO, made
	// printable; "" before the first.
	Helo string
	// Log carries the session's listener and client (and proxy) in every
	// line.
	Log *slog.Logger
}

// IP is the client's address without its port: the key of per-client
// limits.
func (c *ConnInfo) IP() string { return remoteIP(c.Remote) }

// remoteIP is an address's host part, or all of it when it has none.
func remoteIP(addr net.Addr) string {
	if tcp, ok := addr.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	return host
}

// Error is a refusal carrying the reply the client gets. Err, when set, is
// the cause, for errors.Is and logs; the client sees only Reply.
type Error struct {
	Reply Reply
	Err   error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return e.Reply.String()
	}
	return e.Reply.String() + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// The body refusals the engine's DATA reader returns, wrapped in an *Error
// with their reply, once it has read the body to its end.
var (
	ErrMessageTooBig      = errors.New("message over the size limit")
	ErrMessageLineTooLong = errors.New("message line over the line limit")
)

// replyOf is the reply for a backend's error: the one it carries, or
// fallback for an error of the backend's own.
func replyOf(err error, fallback Reply) Reply {
	if refusal, ok := errors.AsType[*Error](err); ok {
		return refusal.Reply
	}
	return fallback
}

// ends reports whether a reply closes the session: 421, as RFC 5321 §3.8
// has it, whoever sends it.
func ends(r Reply) bool { return r.Code == 421 }
