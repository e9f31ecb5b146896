package smtpd

import (
	"errors"
	"strings"

	"github.com/emersion/go-sasl"
)

// errAuthCancelled means the client answered a challenge with "*".
var errAuthCancelled = errors.New("authentication cancelled")

// errAuthzid refuses a PLAIN login that asks to act as someone else: the
// relay offers no such thing, and the Backend is not asked.
var errAuthzid = &Error{Reply: ReplyAuthFailed, Err: errors.New("authorization identity differs from the username")}

func (s *session) cmdAuth(arg string) bool {
	switch {
	case s.info.Helo == "":
		return s.protocolError(ReplyHeloFirst)
	case s.authed:
		return s.protocolError(ReplyAuthAlready)
	case s.inMail:
		return s.protocolError(ReplyAuthInTransaction)
	case !s.authAllowed():
		return s.protocolError(ReplyAuthNeedsTLS)
	}
	mech, initial, _ := strings.Cut(strings.TrimSpace(arg), " ")
	mech = strings.ToUpper(mech)
	// Asked before the mechanism is looked at: a client the Backend shut
	// out hears so whatever it tries.
	if err := s.backend.AuthStart(mech); err != nil {
		return s.authRefused(mech, err)
	}
	server := s.saslServer(mech)
	if server == nil {
		return s.protocolError(ReplyAuthMechanism)
	}
	return s.authDone(mech, s.exchange(server, initial))
}

// saslServer is the server side of mech, checking what it decodes with the
// Backend; nil for a mechanism not offered.
func (s *session) saslServer(mech string) sasl.Server {
	check := func(username, password string) error {
		return s.backend.Auth(mech, username, password)
	}
	switch mech {
	case "LOGIN":
		return newLoginServer(check)
	case "PLAIN":
		return sasl.NewPlainServer(func(authzid, username, password string) error {
			if authzid != "" && authzid != username {
				return errAuthzid
			}
			return check(username, password)
		})
	}
	return nil
}

// authDone answers the end of an exchange.
func (s *session) authDone(mech string, err error) bool {
	_, refusal := errors.AsType[*Error](err)
	switch {
	case err == nil:
		s.authed = true
		s.srv.deps.Metrics.auth.WithLabelValues(mech, "success").Inc()
		s.reply(ReplyAuthOK)
		return true
	case errors.Is(err, errAuthCancelled):
		s.srv.deps.Metrics.auth.WithLabelValues(mech, "cancelled").Inc()
		return s.protocolError(ReplyAuthCancelled)
	case errors.Is(err, errSASLSyntax):
		s.srv.deps.Metrics.auth.WithLabelValues(mech, "malformed").Inc()
		return s.protocolError(ReplyAuthSyntax)
	case refusal:
		return s.authRefused(mech, err)
	default:
		// A read failure: the connection is gone.
		s.readFailed(err)
		return false
	}
}

// authRefused answers a refused login: throttled when the Backend shut
// the address out (ErrAuthThrottled), a failure otherwise.
func (s *session) authRefused(mech string, err error) bool {
	result := "failure"
	if errors.Is(err, ErrAuthThrottled) {
		result = "throttled"
	} else {
		// The username is not logged: clients sometimes put the key there.
		s.log.Info("authentication failed", "mechanism", mechanismLabel(mech))
	}
	s.srv.deps.Metrics.auth.WithLabelValues(mechanismLabel(mech), result).Inc()
	return s.refused(err)
}

// mechanismLabel is mech as metrics and logs may show it. A shut-out
// client hears 421 whatever it sends after AUTH, before its mechanism is
// looked at, so mech is whatever it sent: a label of its own choosing would
// make series without bound, and a client that typed its key after AUTH
// would put the key in a metric.
func mechanismLabel(mech string) string {
	switch mech {
	case "LOGIN", "PLAIN":
		return mech
	}
	return "other"
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

// saslError sorts what a mechanism returned: the Backend's refusals pass
// through; go-sasl's own errors (a malformed PLAIN message), and a
// Backend's error without a reply, mean the response could not be used.
func saslError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sasl.ErrUnexpectedClientResponse):
		return &Error{Reply: ReplyAuthFailed, Err: err}
	}
	if _, ok := errors.AsType[*Error](err); ok {
		return err
	}
	return errSASLSyntax
}
