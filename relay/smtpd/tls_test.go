package smtpd_test

import (
	"crypto/tls"
	"net/smtp"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/mailfleet/mailfleet/relay/certs"
)

// TestNetSMTPStartTLSThenAuth drives the relay with Go's own client.
func TestNetSMTPStartTLSThenAuth(t *testing.T) {
	env := startRelay(t)
	for _, listener := range []string{"smtp", "submission"} {
		t.Run(listener, func(t *testing.T) {
			c, err := smtp.Dial(env.addr(listener))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.StartTLS(env.clientTLS()); err != nil {
				t.Fatal(err)
			}
			if ok, mechs := c.Extension("AUTH"); !ok || mechs != "LOGIN PLAIN" {
				t.Fatalf("AUTH after STARTTLS = %v %q", ok, mechs)
			}
			if ok, _ := c.Extension("STARTTLS"); ok {
				t.Fatal("STARTTLS offered again inside TLS")
			}
			if err := c.Auth(smtp.PlainAuth("", userMain+"#1001", env.keys[userMain], "127.0.0.1")); err != nil {
				t.Fatal(err)
			}
			sendWithNetSMTP(t, c)
		})
	}
}

func sendWithNetSMTP(t *testing.T, c *smtp.Client) {
	t.Helper()
	if err := c.Mail("support@ifaxin.com"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("ben@ifaxin.com"); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("Subject: net/smtp\r\n\r\n.leading dot\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

func TestSubmissionPortRequiresTLSForAuth(t *testing.T) {
	env := startRelay(t)
	c := dialRaw(t, env.addr("submission"))
	c.reply()
	if ehlo := c.cmd("EHLO client.test"); strings.Contains(ehlo, "AUTH") || !strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("EHLO before TLS on 587 = %q; want STARTTLS and no AUTH", ehlo)
	}
	c.expect("AUTH PLAIN "+b64("\x00"+userMain+"\x00"+env.keys[userMain]), "530 5.7.0 Must issue a STARTTLS command first")
}

func TestImplicitTLS(t *testing.T) {
	env := startRelay(t)
	conn, err := tls.Dial("tcp", env.addr("smtps"), env.clientTLS())
	if err != nil {
		t.Fatal(err)
	}
	c, err := smtp.NewClient(conn, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Fatal("STARTTLS offered on the implicit-TLS port")
	}
	if err := c.Auth(smtp.PlainAuth("", userMain, env.keys[userMain], "localhost")); err != nil {
		t.Fatal(err)
	}
	sendWithNetSMTP(t, c)
	for _, m := range env.stored() {
		if !m.Env.TLS || string(m.Body) != "Subject: net/smtp\r\n\r\n.leading dot\r\n" {
			t.Fatalf("stored %+v %q", m.Env, m.Body)
		}
	}
}

func TestTLSVersions(t *testing.T) {
	env := startRelay(t)
	tests := []struct {
		name    string
		version uint16
		ok      bool
	}{
		{"TLS 1.0", tls.VersionTLS10, false},
		{"TLS 1.1", tls.VersionTLS11, false},
		{"TLS 1.2", tls.VersionTLS12, true},
		{"TLS 1.3", tls.VersionTLS13, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := env.clientTLS()
			cfg.MinVersion, cfg.MaxVersion = tt.version, tt.version
			for _, via := range []string{"smtps", "starttls"} {
				err := handshake(t, env, via, cfg)
				if (err == nil) != tt.ok {
					t.Fatalf("%s via %s: handshake error %v, want success %v", tt.name, via, err, tt.ok)
				}
			}
		})
	}
}

func handshake(t *testing.T, env *relayEnv, via string, cfg *tls.Config) error {
	if via == "smtps" {
		conn, err := tls.Dial("tcp", env.addr("smtps"), cfg)
		if err == nil {
			conn.Close()
		}
		return err
	}
	c := dialRaw(t, env.addr("smtp"))
	c.reply()
	c.cmd("EHLO client.test")
	c.expect("STARTTLS", "220 2.0.0 Ready to start TLS")
	return tls.Client(c.conn, cfg).Handshake()
}

// TestStartTLSInjectionDiscarded sends a command pipelined behind STARTTLS in
// the same packet, as a man in the middle would inject it (CVE-2011-0411).
func TestStartTLSInjectionDiscarded(t *testing.T) {
	env := startRelay(t)
	c := dialRaw(t, env.addr("smtp"))
	c.reply()
	c.cmd("EHLO client.test")
	c.write("STARTTLS\r\nRSET\r\nMAIL FROM:<injected@evil.example>\r\n")
	if got := c.reply(); got != "220 2.0.0 Ready to start TLS" {
		t.Fatalf("got %q", got)
	}
	tc := newRawClient(t, tls.Client(c.conn, env.clientTLS()))
	// The first reply inside TLS must be the one to our EHLO, not to the
	// injected RSET or MAIL.
	if got := tc.cmd("EHLO client.test"); !strings.HasPrefix(got, "250-mx.test Hello client.test") {
		t.Fatalf("first reply inside TLS = %q", got)
	}
	// And the session started over: no MAIL transaction exists.
	tc.expect("RCPT TO:<b@example.com>", "503 5.5.1 Need MAIL command first")
}

func TestStartTLSRefusals(t *testing.T) {
	env := startRelay(t)
	c := dialRawTLS(t, env.addr("smtps"), env.clientTLS())
	c.reply()
	c.cmd("EHLO client.test")
	c.expect("STARTTLS", "503 5.5.1 TLS already active")

	plain := startRelay(t, func(s *relaySpec) {
		s.server.TLS = nil
		s.server.Listeners = s.server.Listeners[:1]
	})
	p := dialRaw(t, plain.addr("smtp"))
	p.reply()
	if ehlo := p.cmd("EHLO client.test"); strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("STARTTLS offered without a certificate: %q", ehlo)
	}
	p.expect("STARTTLS", "502 5.5.1 STARTTLS not available")
}

// TestCertificateRotationKeepsOpenSessions renews the certificate files the
// way cert-manager does while a TLS session is open.
func TestCertificateRotationKeepsOpenSessions(t *testing.T) {
	env := startRelay(t)
	before := env.certs.Leaf().SerialNumber
	open := dialRawTLS(t, env.addr("smtps"), env.clientTLS())
	open.login(userMain, env.keys[userMain])

	gen := env.certs.Generation()
	ca, err := certs.GenerateCA("rotated CA")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue([]string{"localhost", "127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, filepath.Join(env.tlsDir, "tls.key"), keyPEM)
	replaceFile(t, filepath.Join(env.tlsDir, "tls.crt"), certPEM)
	deadline := time.Now().Add(10 * time.Second)
	for env.certs.Generation() == gen {
		if time.Now().After(deadline) {
			t.Fatal("certificate not reloaded within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The session opened before the renewal goes on.
	if got := open.send("a@ifaxin.com", "b@example.com", "Subject: x\r\n\r\nafter rotation\r\n"); !queuedReply.MatchString(got) {
		t.Fatalf("open session after rotation: %q", got)
	}
	// A new session gets the new certificate.
	conn, err := tls.Dial("tcp", env.addr("smtps"), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	after := conn.ConnectionState().PeerCertificates[0].SerialNumber
	if after.Cmp(before) == 0 {
		t.Fatal("a new session still gets the old certificate")
	}
}

func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestGoSMTPClientLogin submits with emersion/go-smtp's client and go-sasl's
// LOGIN client over implicit TLS, a third real client implementation.
func TestGoSMTPClientLogin(t *testing.T) {
	env := startRelay(t)
	c, err := gosmtp.DialTLS(env.addr("smtps"), env.clientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewLoginClient(userOther+"#2001", env.keys[userOther])); err != nil {
		t.Fatal(err)
	}
	body := "Subject: go-smtp\r\n\r\nhello\r\n"
	if err := c.SendMail("a@ifaxin.com", []string{"b@example.com", "c@example.com"}, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	stored := env.stored()
	if len(stored) != 1 {
		t.Fatalf("stored %d messages", len(stored))
	}
	for _, m := range stored {
		if m.Env.APIUser != userOther || m.Env.LabelID != "2001" || len(m.Env.To) != 2 || string(m.Body) != body {
			t.Fatalf("stored %+v %q", m.Env, m.Body)
		}
	}
}
