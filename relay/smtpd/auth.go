package smtpd

import (
	"errors"
	"strings"

	"github.com/emersion/go-sasl"

	"github.com/mailfleet/mailfleet/relay/credentials"
)

// errAuthCancelled means the client answered a challenge with "*".
var errAuthCancelled = errors.New("authentication cancelled")

func (s *session) cmdAuth(arg string) bool {
	switch {
	case s.helo == "":
		return s.protocolError(ReplyHeloFirst)
	case s.identity != nil:
		return s.protocolError(ReplyAuthAlready)
	case s.from != nil:
		return s.protocolError(ReplyAuthInTransaction)
	case !s.authAllowed():
		return s.protocolError(ReplyAuthNeedsTLS)
	}
	mech, initial, _ := strings.Cut(strings.TrimSpace(arg), " ")
	mech = strings.ToUpper(mech)
	ip := remoteIP(s.remote)
	if !s.srv.throttle.open(ip) {
		return s.throttled(mech)
	}
	var identity credentials.Identity
	authenticate := func(username, key string) error {
		// The failure is reserved around the key check alone, not the
		// exchange: a client's pool of sessions logging in at once must
		// not be refused for attempts still waiting on the network.
		attempt, ok := s.srv.throttle.begin(ip)
		if !ok {
			return errThrottled
		}
		id, err := s.srv.deps.Auth.Authenticate(username, key)
		identity = id
		switch {
		case err == nil:
			attempt.succeeded()
		case errors.Is(err, credentials.ErrInvalid):
			attempt.failed()
		default:
			attempt.abandoned()
		}
		return err
	}
	var server sasl.Server
	switch mech {
	case "LOGIN":
		server = newLoginServer(authenticate)
	case "PLAIN":
		server = sasl.NewPlainServer(func(authzid, username, key string) error {
			if authzid != "" && authzid != username {
				return credentials.ErrInvalid
			}
			return authenticate(username, key)
		})
	default:
		return s.protocolError(ReplyAuthMechanism)
	}
	err := s.exchange(server, initial)
	switch {
	case errors.Is(err, errThrottled):
		return s.throttled(mech)
	case err == nil:
		s.identity = &identity
		s.srv.deps.Metrics.auth.WithLabelValues(mech, "success").Inc()
		s.log.Info("authenticated", "mechanism", mech, "account", identity.APIUser, "label", identity.LabelID)
		s.reply(ReplyAuthOK)
		return true
	case errors.Is(err, errAuthCancelled):
		s.srv.deps.Metrics.auth.WithLabelValues(mech, "cancelled").Inc()
		return s.protocolError(ReplyAuthCancelled)
	case errors.Is(err, errSASLSyntax):
		s.srv.deps.Metrics.auth.WithLabelValues(mech, "malformed").Inc()
		return s.protocolError(ReplyAuthSyntax)
	case errors.Is(err, credentials.ErrInvalid), errors.Is(err, sasl.ErrUnexpectedClientResponse):
		s.srv.deps.Metrics.auth.WithLabelValues(mech, "failure").Inc()
		// The username is not logged: clients sometimes put the key there.
		s.log.Info("authentication failed", "mechanism", mech)
		s.reply(ReplyAuthFailed)
		return true
	default:
		// A read failure: the connection is gone.
		s.readFailed(err)
		return false
	}
}

// exchange runs a SASL conversation: challenges go out as 334 replies, and
// responses come back one line each. initial is the response given on the
// AUTH line, if any.
func (s *session) exchange(server sasl.Server, initial string) error {
	var response []byte
	if initial != "" {
		var err error
		if response, err = decodeSASL(initial); err != nil {
			return err
		}
	}
	for {
		challenge, done, err := server.Next(response)
		if err != nil || done {
			return saslError(err)
		}
		s.reply(ReplyAuthChallenge.With(encodeChallenge(challenge)))
		line, err := s.readCommand()
		if err != nil {
			if errors.Is(err, errLineTooLong) {
				return errSASLSyntax
			}
			return err
		}
		if line == "*" {
			return errAuthCancelled
		}
		if response, err = decodeSASL(line); err != nil {
			return err
		}
	}
}

// saslError maps go-sasl's own errors (a malformed PLAIN message) to the
// session's; authentication errors pass through.
// errThrottled means the client's address has no failures left.
var errThrottled = errors.New("authentication throttled")

// throttled answers an address that failed too often, and ends the session.
func (s *session) throttled(mech string) bool {
	s.srv.deps.Metrics.auth.WithLabelValues(mech, "throttled").Inc()
	s.reply(ReplyAuthThrottled.With(s.srv.cfg.Hostname))
	return false
}

func saslError(err error) error {
	if err == nil || errors.Is(err, credentials.ErrInvalid) || errors.Is(err, sasl.ErrUnexpectedClientResponse) || errors.Is(err, errThrottled) {
		return err
	}
	return errSASLSyntax
}
