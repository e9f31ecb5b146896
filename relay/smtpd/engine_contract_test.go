package smtpd_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailfleet/mailfleet/relay/smtpd"
)

// careless is a Backend that breaks the Data contract in the ways a
// careless one could: it returns nil after reading only the first bytes, or
// after an error it was handed, and it shuts out every login as throttled.
type careless struct{ readAll, throttle bool }

func (b careless) NewSession(*smtpd.ConnInfo) (smtpd.Session, error) { return b, nil }
func (b careless) AuthStart(string) error {
	if !b.throttle {
		return nil
	}
	return &smtpd.Error{Reply: smtpd.ReplyAuthThrottled.With("mx.test"), Err: smtpd.ErrAuthThrottled}
}
func (careless) Auth(_, _, _ string) error            { return nil }
func (careless) Mail(string, smtpd.MailOptions) error { return nil }
func (careless) Rcpt(string) error                    { return nil }
func (careless) Reset()                               {}
func (careless) Logout()                              {}
func (b careless) Data(_ context.Context, r io.Reader) (string, error) {
	if b.readAll {
		io.Copy(io.Discard, r) // and ignores what it returns
	} else {
		r.Read(make([]byte, 3))
	}
	return "q1", nil
}

func startCareless(t *testing.T, b careless, reg prometheus.Registerer) string {
	t.Helper()
	srv := startServer(t, smtpd.Config{
		Hostname:        "mx.test",
		MaxMessageBytes: 64,
		Listeners:       []smtpd.Listener{{Name: "test", Addr: "127.0.0.1:0", AllowAuthWithoutTLS: true}},
	}, b, slog.New(slog.DiscardHandler), reg)
	return srv.Addr("test").String()
}

// TestEngineAcknowledgesOnlyWholeBodies: 250 is said only for a body the
// Backend read to its end within the limits, whatever the Backend returns;
// the session goes on in step after the refusal.
func TestEngineAcknowledgesOnlyWholeBodies(t *testing.T) {
	for _, tt := range []struct {
		name    string
		backend careless
		body    string
		want    string
	}{
		{"returned after three bytes", careless{}, "hello, world\r\n.", "451 4.3.0 Message not accepted, try again later"},
		{"ignored the size limit", careless{readAll: true}, strings.Repeat("x", 70) + "\r\n.", "552 5.3.4 Message size exceeds fixed limit"},
		{"read it whole", careless{readAll: true}, "hello\r\n.", "250 2.0.0 #q1#Queued"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, startCareless(t, tt.backend, prometheus.NewRegistry()))
			c.reply()
			c.expectPrefix("EHLO client.test", "250")
			c.expect("AUTH PLAIN "+b64("\x00user\x00key"), "235 2.7.0 Authentication successful")
			c.expect("MAIL FROM:<a@example.com>", "250 2.1.0 sender <a@example.com> OK")
			c.expect("RCPT TO:<b@example.com>", "250 2.1.5 recipient <b@example.com> OK")
			c.expect("DATA", "354 go ahead")
			c.expect(tt.body, tt.want)
			c.expect("NOOP", "250 2.0.0 OK")
		})
	}
}

// Attack (review of the engine split): a client the Backend has shut out
// hears 421 to any AUTH, before its mechanism is looked at, and the
// mechanism it sent became a label of mailfleet_relay_auth_total. A client
// that typed its key after AUTH put the key into a metric, and any client
// could mint series without bound. The label is now LOGIN, PLAIN or other.
func TestAttackAuthMechanismLabel(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := dialRaw(t, startCareless(t, careless{throttle: true}, reg))
	c.reply()
	c.expectPrefix("EHLO client.test", "250")
	const key = "k3y-typed-where-the-mechanism-goes"
	c.expect("AUTH "+key, "421 4.7.0 mx.test Too many authentication failures, try again later")
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.Contains(strings.ToLower(l.GetValue()), strings.ToLower(key)) {
					t.Errorf("%s has the label %s=%q", f.GetName(), l.GetName(), l.GetValue())
				}
				if f.GetName() == "mailfleet_relay_auth_total" && l.GetName() == "mechanism" && l.GetValue() == "other" {
					found = true
				}
			}
		}
	}
	if !found {
		t.Error(`no mailfleet_relay_auth_total{mechanism="other"}: the throttled attempt was not counted`)
	}
}
