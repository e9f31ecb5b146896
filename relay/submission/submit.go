package submission

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"

	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/smtpd"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// The HTTP API is the relay's second door. It goes through the same
// session as an SMTP client does, so the failed-auth throttle, the sender
// and From rules, the recipient cap, the budget, the spool and the metrics
// are the ones SMTP uses, not copies that could drift apart.

// Client is who submits through the HTTP API.
type Client struct {
	// Remote is the client's address: the throttle's key and the
	// envelope's remoteAddr.
	Remote net.Addr
	TLS    bool
	// TLSVersion is the connection's ("TLSv1.3"), for the Received field.
	TLSVersion string
	Log        *slog.Logger
}

// Message is a whole message, envelope and body, as the HTTP API builds it.
type Message struct {
	From       string
	To         []string
	CustomArgs map[string]string
	// Body is the RFC 5322 message, CRLF line ends, without dot-stuffing.
	Body io.Reader
}

// Refusal is a message the policy refused: Reason is one of the Reason
// constants, Err the SMTP reply an SMTP client would have had (its text
// says what was wrong, and never holds a key).
type Refusal struct {
	Reason string
	Err    error
}

func (r *Refusal) Error() string { return r.Reason + ": " + r.Err.Error() }
func (r *Refusal) Unwrap() error { return r.Err }

// ErrThrottled means the client's address has no failed logins left in
// the window; ErrInvalidCredentials that the username or key is wrong.
var (
	ErrThrottled          = smtpd.ErrAuthThrottled
	ErrInvalidCredentials = credentials.ErrInvalid
)

// session opens a policy session for an HTTP client.
func (b *Backend) httpSession(c Client) *session {
	log := c.Log
	if log == nil {
		log = slog.Default()
	}
	conn := &smtpd.ConnInfo{Listener: "http", Remote: c.Remote, TLS: c.TLS, TLSVersion: c.TLSVersion, Log: log}
	return &session{b: b, conn: conn, log: log, via: spool.ViaHTTP}
}

// Login checks a username (api_user or api_user#label_id) and key under
// the same failed-auth throttle as SMTP AUTH.
func (b *Backend) Login(c Client, username, key string) (credentials.Identity, error) {
	s := b.httpSession(c)
	if err := s.Auth("HTTP-BASIC", username, key); err != nil {
		return credentials.Identity{}, err
	}
	return *s.identity, nil
}

// Submit queues m for the account id logged in as, with SMTP's checks in
// SMTP's order: sender, recipients, From header, budget, durable commit.
// It returns the queue id once the queue acknowledged the message, or a
// *Refusal; any other error is a fault the client may retry.
func (b *Backend) Submit(ctx context.Context, c Client, id credentials.Identity, m Message) (string, error) {
	s := b.httpSession(c)
	s.identity, s.customArgs = &id, m.CustomArgs
	if err := s.Mail(m.From, smtpd.MailOptions{}); err != nil {
		return "", &Refusal{Reason: ReasonSenderNotAllowed, Err: err}
	}
	if len(m.To) > id.MaxRecipients {
		b.deps.Metrics.rejected(&id, ReasonTooManyRecipients)
		return "", &Refusal{Reason: ReasonTooManyRecipients, Err: &smtpd.Error{Reply: smtpd.ReplyTooManyRcpts}}
	}
	for _, to := range m.To {
		if err := s.Rcpt(to); err != nil {
			if errors.Is(err, errSuppressed) {
				b.deps.Metrics.rejected(&id, ReasonRecipientSuppressed)
				return "", &Refusal{Reason: ReasonRecipientSuppressed, Err: err}
			}
			return "", err
		}
	}
	queued, rej := s.queue(ctx, m.Body)
	if rej != nil {
		if _, ok := errors.AsType[*smtpd.Error](rej.err); !ok {
			return "", rej.err
		}
		return "", &Refusal{Reason: rej.reason, Err: rej.err}
	}
	return queued, nil
}
