package smtpd_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailfleet/mailfleet/relay/smtpd"
)

// fakeBackend is a Backend in a few lines: the password "secret" logs in;
// an address's domain picks the answer to MAIL or RCPT (refusal); DATA
// keeps the body and queues it as "q1".
type fakeBackend struct {
	mu     sync.Mutex // sessions run on the server's goroutines
	bodies []string
}

type fakeSession struct{ b *fakeBackend }

func (b *fakeBackend) NewSession(*smtpd.ConnInfo) (smtpd.Session, error) { return fakeSession{b}, nil }

func (fakeSession) AuthStart(string) error { return nil }
func (fakeSession) Auth(_, _, password string) error {
	if password != "secret" {
		return &smtpd.Error{Reply: smtpd.ReplyAuthFailed}
	}
	return nil
}
func (fakeSession) Mail(from string, _ smtpd.MailOptions) error { return refusal(from) }
func (fakeSession) Rcpt(to string) error                        { return refusal(to) }
func (fakeSession) Reset()                                      {}
func (fakeSession) Logout()                                     {}

func (s fakeSession) Data(_ context.Context, r io.Reader) (string, error) {
	body, err := io.ReadAll(r)
	if err != nil {
		return "", err
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.b.bodies = append(s.b.bodies, string(body))
	return "q1", nil
}

// refusal is the fake's answer for an address, by its domain.
func refusal(addr string) error {
	switch {
	case strings.HasSuffix(addr, "@refused.example"):
		return &smtpd.Error{Reply: smtpd.ReplySenderNotAllowed.With(addr)}
	case strings.HasSuffix(addr, "@closing.example"):
		return &smtpd.Error{Reply: smtpd.ReplyShuttingDown.With("mx.test")}
	case strings.HasSuffix(addr, "@broken.example"):
		return errors.New("backend down")
	}
	return nil
}

// TestEngineWithFakeBackend runs command scripts against the engine: what
// the protocol decides, and that a Backend's answers are written as they
// are, with no relay policy behind them.
func TestEngineWithFakeBackend(t *testing.T) {
	login := [][2]string{
		{"EHLO client.test", "250-mx.test Hello client.test\n250-PIPELINING\n250-8BITMIME\n250-SIZE 64\n250-ENHANCEDSTATUSCODES\n250 AUTH LOGIN PLAIN"},
		{"AUTH PLAIN " + b64("\x00user\x00secret"), "235 2.7.0 Authentication successful"},
	}
	tests := []struct {
		name   string
		script [][2]string // command, exact reply
		closed bool        // the engine closes the connection at the script's end
	}{
		{"auth is the backend's", [][2]string{
			{"EHLO client.test", login[0][1]},
			{"MAIL FROM:<a@example.com>", "530 5.7.0 Authentication required"},
			{"AUTH PLAIN " + b64("\x00user\x00wrong"), "535 5.7.8 Authentication credentials invalid"},
			{"AUTH LOGIN", "334 VXNlcm5hbWU6"},
			{b64("user"), "334 UGFzc3dvcmQ6"},
			{b64("secret"), "235 2.7.0 Authentication successful"},
		}, false},
		{"a refusal is written as it is", append(login[:2:2],
			[2]string{"MAIL FROM:<a@refused.example>", "553 5.7.1 Sender address <a@refused.example> not allowed for this account"},
			[2]string{"MAIL FROM:<a@example.com>", "250 2.1.0 sender <a@example.com> OK"},
			[2]string{"RCPT TO:<b@broken.example>", "451 4.3.0 Message not accepted, try again later"},
			[2]string{"DATA", "503 5.5.1 Need RCPT command first"},
		), false},
		{"the queue id is the backend's", append(login[:2:2],
			[2]string{"MAIL FROM:<>", "250 2.1.0 sender <> OK"},
			[2]string{"RCPT TO:<b@example.com>", "250 2.1.5 recipient <b@example.com> OK"},
			[2]string{"DATA", "354 go ahead"},
			[2]string{"..hi\r\n.", "250 2.0.0 #q1#Queued"},
		), false},
		{"the engine's limits come first", append(login[:2:2],
			[2]string{"MAIL FROM:<a@example.com> SIZE=65", "552 5.3.4 Message size exceeds fixed limit"},
			[2]string{"MAIL FROM:<a@example.com>", "250 2.1.0 sender <a@example.com> OK"},
			[2]string{"RCPT TO:<b@example.com>", "250 2.1.5 recipient <b@example.com> OK"},
			[2]string{"DATA", "354 go ahead"},
			[2]string{strings.Repeat("x", 70) + "\r\n.", "552 5.3.4 Message size exceeds fixed limit"},
			[2]string{"NOOP", "250 2.0.0 OK"},
		), false},
		{"a 421 from the backend ends the session", append(login[:2:2],
			[2]string{"MAIL FROM:<a@closing.example>", "421 4.3.2 mx.test Service shutting down, try again later"},
		), true},
	}
	backend := &fakeBackend{}
	srv := startServer(t, smtpd.Config{
		Hostname:        "mx.test",
		MaxMessageBytes: 64,
		Listeners:       []smtpd.Listener{{Name: "test", Addr: "127.0.0.1:0", AllowAuthWithoutTLS: true}},
	}, backend, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, srv.Addr("test").String())
			if got := c.reply(); got != "220 mx.test ESMTP mailfleet ready" {
				t.Fatalf("greeting = %q", got)
			}
			for _, step := range tt.script {
				c.expect(step[0], step[1])
			}
			if !tt.closed {
				c.expect("QUIT", "221 2.0.0 mx.test closing connection")
			}
			if _, err := c.r.ReadByte(); err != io.EOF {
				t.Fatalf("after the script: %v, want the connection closed", err)
			}
		})
	}
	backend.mu.Lock()
	defer backend.mu.Unlock()
	if len(backend.bodies) != 1 || backend.bodies[0] != ".hi\r\n" {
		t.Fatalf("bodies the backend received: %q, want the one unstuffed", backend.bodies)
	}
}
