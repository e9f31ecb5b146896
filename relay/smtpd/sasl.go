package smtpd

import (
	"encoding/base64"
	"errors"

	"github.com/emersion/go-sasl"
)

// The LOGIN mechanism's challenges, as every client expects them.
var (
	loginUsername = []byte("Username:")
	loginPassword = []byte("Password:")
)

// errSASLSyntax means a client's SASL response could not be decoded.
var errSASLSyntax = errors.New("malformed SASL response")

// loginServer is the server side of the LOGIN mechanism, which go-sasl does
// not provide. Both forms are served: `AUTH LOGIN` followed by the username in
// reply to 334 VXNlcm5hbWU6, and `AUTH LOGIN <base64 username>` as Python's
// smtplib sends it.
type loginServer struct {
	username     string
	haveUsername bool
	authenticate func(username, password string) error
}

func newLoginServer(authenticate func(username, password string) error) sasl.Server {
	return &loginServer{authenticate: authenticate}
}

// Next implements sasl.Server.
func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch {
	case !l.haveUsername && response == nil:
		return loginUsername, false, nil
	case !l.haveUsername:
		l.username, l.haveUsername = string(response), true
		return loginPassword, false, nil
	default:
		return nil, true, l.authenticate(l.username, string(response))
	}
}

// decodeSASL decodes one base64 SASL response line (RFC 4954 §4). "=" stands
// for an empty response.
func decodeSASL(line string) ([]byte, error) {
	if line == "=" {
		return []byte{}, nil
	}
	b, err := base64.StdEncoding.DecodeString(line)
	if err != nil {
		return nil, errSASLSyntax
	}
	return b, nil
}

// encodeChallenge is the text of a 334 reply; an empty challenge is sent as
// nothing, as RFC 4954 §4 shows.
func encodeChallenge(challenge []byte) string {
	if len(challenge) == 0 {
		return ""
	}
	return base64.StdEncoding.EncodeToString(challenge)
}
