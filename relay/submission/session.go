package submission

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/smtpd"
)

// session is one client's session: who it logged in as and the
// transaction under way.
type session struct {
	b        *Backend
	conn     *smtpd.ConnInfo
	log      *slog.Logger
	identity *credentials.Identity // nil until Auth succeeds
	from     string
	rcpts    []string
	// dropped counts the recipients accepted and left out because they
	// are suppressed (Config.DropSuppressed).
	dropped int
	// customArgs come with an HTTP submission; SMTP has none (yet).
	customArgs map[string]string
	// via is the envelope's door: empty for SMTP (spool.Envelope.Via).
	via string
}

// errThrottled means the client's address has no failures left.
var errThrottled = smtpd.ErrAuthThrottled

// AuthStart shuts out an address already over its failures, before it
// sends a key; it reserves nothing.
func (s *session) AuthStart(string) error {
	if !s.b.throttle.open(s.conn.IP()) {
		return s.throttled()
	}
	return nil
}

// throttled ends the session with 421: the address has no failures left.
func (s *session) throttled() error {
	return &smtpd.Error{Reply: smtpd.ReplyAuthThrottled.With(s.conn.Hostname), Err: errThrottled}
}

// Auth checks the key. The failure is reserved around the key check
// alone, not the exchange: a client's pool of sessions logging in at once
// must not be refused for attempts still waiting on the network.
func (s *session) Auth(mechanism, username, key string) error {
	attempt, ok := s.b.throttle.begin(s.conn.IP(), username)
	if !ok {
		return s.throttled()
	}
	id, err := s.b.deps.Auth.Authenticate(username, key)
	switch {
	case err == nil:
		attempt.succeeded()
		s.identity = &id
		s.log.Info("authenticated", "mechanism", mechanism, "account", id.APIUser, "label", id.LabelID)
		return nil
	case errors.Is(err, credentials.ErrInvalid):
		attempt.failed()
		return &smtpd.Error{Reply: smtpd.ReplyAuthFailed, Err: err}
	default:
		attempt.abandoned()
		return fmt.Errorf("authenticate: %w", err)
	}
}

// Mail takes the sender when the account may use its domain.
func (s *session) Mail(from string, _ smtpd.MailOptions) error {
	if s.identity == nil {
		return &smtpd.Error{Reply: smtpd.ReplyAuthRequired}
	}
	if !s.senderAllowed(from) {
		s.b.deps.Metrics.rejected(s.identity, ReasonSenderNotAllowed)
		return &smtpd.Error{Reply: smtpd.ReplySenderNotAllowed.With(from)}
	}
	s.from = from
	return nil
}

// senderAllowed decides on the domain the SMTP grammar found, never on a
// second reading of the raw address.
func (s *session) senderAllowed(addr string) bool {
	mb, ok := smtpd.ParseMailbox(addr)
	if !ok {
		return s.identity.SenderDomainAllowed("") // the null sender
	}
	return s.identity.SenderDomainAllowed(mb.Domain)
}

// Rcpt takes a recipient within the account's cap (452: the client sends
// the rest in another transaction).
func (s *session) Rcpt(to string) error {
	if len(s.rcpts) >= s.identity.MaxRecipients {
		return &smtpd.Error{Reply: smtpd.ReplyTooManyRcpts}
	}
	if s.suppressed(to) {
		if s.b.cfg.DropSuppressed {
			s.dropped++
			return nil
		}
		return &smtpd.Error{Reply: smtpd.ReplyRcptSuppressed.With(to), Err: errSuppressed}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

// errSuppressed marks a recipient refused because it is suppressed.
var errSuppressed = errors.New("recipient suppressed")

// suppressed reports, with an event, a recipient the account's mail
// bounced from for good: refused here, it costs no budget and no queue
// write, and the sender learns at once.
func (s *session) suppressed(to string) bool {
	if s.b.deps.Suppressions == nil {
		return false
	}
	if _, ok := s.b.deps.Suppressions.Suppressed(context.Background(), s.identity.APIUser, to); !ok {
		return false
	}
	if s.b.deps.Events != nil {
		s.b.deps.Events.Suppressed(s.identity.APIUser, s.identity.LabelID, to)
	}
	s.log.Info("recipient suppressed", "account", s.identity.APIUser, "label", s.identity.LabelID)
	return true
}

func (s *session) Reset() {
	s.from = ""
	s.rcpts = s.rcpts[:0]
	s.dropped = 0
}

func (s *session) Logout() {}
