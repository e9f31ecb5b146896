package delivery

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailfleet/mailfleet/relay/smtpclient"
)

// smarthostTo returns a Smarthost for s, closed when the test ends.
func smarthostTo(t *testing.T, s *sink, opts ...func(*SmarthostConfig)) *Smarthost {
	t.Helper()
	cfg := SmarthostConfig{
		Host: s.host(), Port: s.port(), Hostname: "relay.mailfleet.test",
		ServerName: "sink.test", RootCAs: roots(t),
	}
	for _, o := range opts {
		o(&cfg)
	}
	sh, err := NewSmarthost(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sh.Close() })
	return sh
}

func TestSmarthostReusesPooledConnection(t *testing.T) {
	s := startSink(t, sinkOptions{})
	metrics := NewMetrics(prometheus.NewRegistry())
	sh := smarthostTo(t, s, func(c *SmarthostConfig) { c.Metrics = metrics })
	for i := range 5 {
		body := fmt.Appendf(nil, "Subject: %d\r\n\r\nbody %d\r\n", i, i)
		rs := sh.Deliver(ctxFor(t), message(fmt.Sprintf("id%d", i), body, "a@example.org"))
		if len(rs) != 1 || rs[0].Outcome != Delivered || rs[0].Code != 250 {
			t.Fatalf("message %d: %+v", i, rs)
		}
	}
	if n := s.conns.Load(); n != 1 {
		t.Fatalf("sink saw %d connections for 5 messages, want 1 reused", n)
	}
	// go-smtp's session counts its own resets too (after each DATA); the
	// client's RSET makes at least one more per reuse.
	if n := s.resets.Load(); n < 4 {
		t.Fatalf("sink saw %d resets, want RSET before each reuse", n)
	}
	got := s.got()
	if len(got) != 5 {
		t.Fatalf("sink got %d messages", len(got))
	}
	for i, m := range got {
		want := fmt.Sprintf("Subject: %d\r\n\r\nbody %d\r\n", i, i)
		if string(afterTrace(t, m.body)) != want {
			t.Fatalf("message %d arrived as %q", i, m.body)
		}
	}
	if v := testutil.ToFloat64(metrics.opened.WithLabelValues("smarthost")); v != 1 {
		t.Fatalf("connections opened metric = %v, want 1", v)
	}
	if v := testutil.ToFloat64(metrics.reused.WithLabelValues("smarthost")); v != 4 {
		t.Fatalf("messages on reused connections = %v, want 4", v)
	}
}

func TestSmarthostTraceHeaders(t *testing.T) {
	s := startSink(t, sinkOptions{})
	sh := smarthostTo(t, s)
	body := []byte("X-Mailfleet-Label: account=forged\r\n\tlabel=forged\r\nSubject: hi\r\nx-MAILFLEET-label: again\r\n\r\nX-Mailfleet-Label: in the body stays\r\n")
	rs := sh.Deliver(ctxFor(t), message("1426390015358_15_6484_8661.relay-0", body, "ben@example.org"))
	if rs[0].Outcome != Delivered {
		t.Fatalf("%+v", rs)
	}
	got := string(s.got()[0].body)
	want := "Received: from client.example ([192.0.2.7])\r\n" +
		"\tby relay.mailfleet.test (mailfleet) with ESMTPSA id 1426390015358_15_6484_8661.relay-0\r\n" +
		"\tfor <ben@example.org>;\r\n" +
		"\tSun, 01 Mar 2026 12:00:00 +0000\r\n" +
		"X-Mailfleet-Label: account=acme; label=1001\r\n" +
		"Subject: hi\r\n\r\nX-Mailfleet-Label: in the body stays\r\n"
	if got != want {
		t.Fatalf("sink got\n%q\nwant\n%q", got, want)
	}
}

func TestSmarthostTLS(t *testing.T) {
	cases := []struct {
		name      string
		sink      sinkOptions
		mode      smtpclient.TLSMode
		untrusted bool
		want      Outcome
		wantTLS   bool
		wantText  string
	}{
		{name: "required and offered", sink: sinkOptions{tls: true}, mode: smtpclient.TLSRequired, want: Delivered, wantTLS: true},
		{name: "required but not offered", sink: sinkOptions{}, mode: smtpclient.TLSRequired, want: Deferred, wantText: "does not offer STARTTLS"},
		{name: "required, certificate not trusted", sink: sinkOptions{tls: true}, mode: smtpclient.TLSRequired, untrusted: true, want: Deferred, wantText: "certificate"},
		{name: "opportunistic and offered", sink: sinkOptions{tls: true}, mode: smtpclient.TLSOpportunistic, untrusted: true, want: Delivered, wantTLS: true},
		{name: "opportunistic, not offered", sink: sinkOptions{}, mode: smtpclient.TLSOpportunistic, want: Delivered},
		{name: "implicit", sink: sinkOptions{implicitTLS: true}, mode: smtpclient.TLSImplicit, want: Delivered, wantTLS: true},
		{name: "implicit, certificate not trusted", sink: sinkOptions{implicitTLS: true}, mode: smtpclient.TLSImplicit, untrusted: true, want: Deferred, wantText: "certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := startSink(t, tc.sink)
			sh := smarthostTo(t, s, func(c *SmarthostConfig) {
				c.TLS = tc.mode
				if tc.untrusted {
					c.RootCAs = nil
				}
			})
			rs := sh.Deliver(ctxFor(t), message("m1", []byte("Subject: x\r\n\r\nhi\r\n"), "a@example.org"))
			if rs[0].Outcome != tc.want {
				t.Fatalf("outcome %v (%+v), want %v", rs[0].Outcome, rs[0], tc.want)
			}
			if !strings.Contains(rs[0].Text, tc.wantText) {
				t.Fatalf("text %q does not mention %q", rs[0].Text, tc.wantText)
			}
			got := s.got()
			if tc.want != Delivered {
				if len(got) != 0 {
					t.Fatalf("sink got %d messages", len(got))
				}
				return
			}
			if len(got) != 1 || got[0].tls != tc.wantTLS {
				t.Fatalf("sink got %+v, want one message with TLS %v", got, tc.wantTLS)
			}
		})
	}
}

func TestSmarthostAuth(t *testing.T) {
	cases := []struct {
		name  string
		mechs []string
		pass  string
		want  Outcome
	}{
		{name: "PLAIN", mechs: []string{sasl.Plain, sasl.Login}, pass: "s3cret", want: Delivered},
		{name: "LOGIN only", mechs: []string{sasl.Login}, pass: "s3cret", want: Delivered},
		{name: "wrong password", mechs: []string{sasl.Plain}, pass: "wrong", want: Deferred},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := startSink(t, sinkOptions{tls: true, user: "relay-user", pass: "s3cret", mechs: tc.mechs})
			sh := smarthostTo(t, s, func(c *SmarthostConfig) {
				c.TLS = smtpclient.TLSRequired
				c.Username, c.Password = "relay-user", tc.pass
			})
			rs := sh.Deliver(ctxFor(t), message("m1", []byte("Subject: x\r\n\r\nhi\r\n"), "a@example.org"))
			if rs[0].Outcome != tc.want {
				t.Fatalf("outcome %+v, want %v", rs[0], tc.want)
			}
			if tc.want == Delivered {
				if got := s.got(); len(got) != 1 || got[0].user != "relay-user" {
					t.Fatalf("sink got %+v", got)
				}
				return
			}
			if rs[0].Code != 535 || strings.Contains(rs[0].Text, tc.pass) {
				t.Fatalf("result %+v: want the server's 535, without the password", rs[0])
			}
		})
	}
}

func TestSmarthostRefusesAuthWithoutTLS(t *testing.T) {
	s := startSink(t, sinkOptions{})
	sh := smarthostTo(t, s, func(c *SmarthostConfig) { c.Username, c.Password = "u", "p" })
	rs := sh.Deliver(ctxFor(t), message("m1", []byte("\r\nhi\r\n"), "a@example.org"))
	if rs[0].Outcome != Deferred || !strings.Contains(rs[0].Text, "without TLS") {
		t.Fatalf("%+v", rs[0])
	}
}

func TestSmarthostPerRecipientReplies(t *testing.T) {
	s := startSink(t, sinkOptions{})
	s.setRcptReply("later@example.org", &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "mailbox busy"})
	s.setRcptReply("nobody@example.org", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"})
	sh := smarthostTo(t, s)
	rs := sh.Deliver(ctxFor(t), message("m1", []byte("Subject: x\r\n\r\nhi\r\n"),
		"ok@example.org", "later@example.org", "nobody@example.org"))
	want := []struct {
		outcome  Outcome
		code     int
		enhanced string
		text     string
	}{
		{Delivered, 250, "2.0.0", ""},
		{Deferred, 450, "4.2.1", "mailbox busy"},
		{Failed, 550, "5.1.1", "no such user"},
	}
	for i, w := range want {
		r := rs[i]
		if r.Outcome != w.outcome || r.Code != w.code || r.Enhanced != w.enhanced || !strings.Contains(r.Text, w.text) || r.RemoteMTA != "127.0.0.1" {
			t.Fatalf("result %d = %+v, want %+v", i, r, w)
		}
	}
	got := s.got()
	if len(got) != 1 || strings.Join(got[0].to, ",") != "ok@example.org" {
		t.Fatalf("sink got %+v", got)
	}
	// Several recipients: the Received header names none of them.
	if bytes.Contains(got[0].body, []byte("for <")) {
		t.Fatalf("Received header discloses recipients: %.300q", got[0].body)
	}
}

func TestSmarthostDataReplyAppliesToAcceptedRecipients(t *testing.T) {
	s := startSink(t, sinkOptions{})
	s.setRcptReply("nobody@example.org", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"})
	s.mu.Lock()
	s.dataReply = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "spam"}
	s.mu.Unlock()
	sh := smarthostTo(t, s)
	rs := sh.Deliver(ctxFor(t), message("m1", []byte("\r\nhi\r\n"), "a@example.org", "nobody@example.org", "b@example.org"))
	if outcomes(rs) != "a@example.org=failed nobody@example.org=failed b@example.org=failed" ||
		rs[0].Enhanced != "5.7.1" || rs[1].Enhanced != "5.1.1" || rs[2].Enhanced != "5.7.1" {
		t.Fatalf("%+v", rs)
	}
	s.mu.Lock()
	s.dataReply = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
	s.mu.Unlock()
	rs = sh.Deliver(ctxFor(t), message("m2", []byte("\r\nhi\r\n"), "a@example.org", "b@example.org"))
	if outcomes(rs) != "a@example.org=deferred b@example.org=deferred" || rs[0].Code != 451 {
		t.Fatalf("%+v", rs)
	}
}

// bigBody is a 16,000,000-byte message: a header section with forged label
// headers, then lines of random printable bytes, some starting with a dot.
func bigBody(size int) (body, want []byte) {
	head := "X-Mailfleet-Label: account=evil\r\nSubject: big\r\nX-MAILFLEET-LABEL: evil\r\n  folded\r\n\r\n"
	wantHead := "Subject: big\r\n\r\n"
	rng := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 0, size)
	b = append(b, head...)
	for len(b) < size {
		n := min(1+rng.IntN(900), size-len(b))
		if n < 2 {
			b = append(b, 'x')
			continue
		}
		line := make([]byte, n-2)
		for i := range line {
			line[i] = byte(' ' + rng.IntN(95))
		}
		if rng.IntN(10) == 0 && len(line) > 0 {
			line[0] = '.'
		}
		b = append(b, line...)
		b = append(b, '\r', '\n')
	}
	return b, append([]byte(wantHead), b[len(head):]...)
}

func TestSmarthost16MBByteIdentical(t *testing.T) {
	s := startSink(t, sinkOptions{tls: true})
	sh := smarthostTo(t, s, func(c *SmarthostConfig) { c.TLS = smtpclient.TLSRequired })
	body, want := bigBody(16_000_000)
	if len(body) != 16_000_000 {
		t.Fatalf("body is %d bytes", len(body))
	}
	start := time.Now()
	rs := sh.Deliver(ctxFor(t), message("big", body, "a@example.org"))
	elapsed := time.Since(start)
	if rs[0].Outcome != Delivered {
		t.Fatalf("%+v", rs[0])
	}
	got := s.got()
	if len(got) != 1 {
		t.Fatalf("sink got %d messages", len(got))
	}
	if rest := afterTrace(t, got[0].body); !bytes.Equal(rest, want) {
		t.Fatalf("body differs: got %d bytes, want %d", len(rest), len(want))
	}
	t.Logf("16,000,000 bytes over STARTTLS in %v", elapsed)
}

func TestSmarthostUpstreamClosesMidTransfer(t *testing.T) {
	s := startSink(t, sinkOptions{})
	s.mu.Lock()
	s.cutAfter = 1 << 20
	s.mu.Unlock()
	sh := smarthostTo(t, s)
	body, _ := bigBody(4 << 20)
	rs := sh.Deliver(ctxFor(t), message("m1", body, "a@example.org", "b@example.org"))
	if outcomes(rs) != "a@example.org=deferred b@example.org=deferred" || rs[0].Code != 0 {
		t.Fatalf("%+v", rs)
	}
	if len(s.got()) != 0 {
		t.Fatal("sink kept a cut message")
	}
	// The broken session is not reused: the next message gets a new one.
	s.mu.Lock()
	s.cutAfter = 0
	s.mu.Unlock()
	rs = sh.Deliver(ctxFor(t), message("m2", []byte("\r\nhi\r\n"), "a@example.org"))
	if rs[0].Outcome != Delivered || s.conns.Load() != 2 {
		t.Fatalf("%+v after %d connections", rs[0], s.conns.Load())
	}
}

func TestSmarthostRetriesDeadPooledConnection(t *testing.T) {
	// The server drops idle sessions long before our idle timeout.
	s := startSink(t, sinkOptions{readTimeout: 100 * time.Millisecond})
	sh := smarthostTo(t, s, func(c *SmarthostConfig) { c.IdleTimeout = time.Hour })
	if rs := sh.Deliver(ctxFor(t), message("m1", []byte("\r\none\r\n"), "a@example.org")); rs[0].Outcome != Delivered {
		t.Fatalf("%+v", rs[0])
	}
	time.Sleep(400 * time.Millisecond)
	rs := sh.Deliver(ctxFor(t), message("m2", []byte("\r\ntwo\r\n"), "a@example.org"))
	if rs[0].Outcome != Delivered {
		t.Fatalf("after the pooled session died: %+v", rs[0])
	}
	if n := s.conns.Load(); n != 2 {
		t.Fatalf("sink saw %d connections, want 2 (the dead one and its replacement)", n)
	}
	if n := len(s.got()); n != 2 {
		t.Fatalf("sink got %d messages, want 2", n)
	}
}

func TestSmarthostIdleSessionsAreClosed(t *testing.T) {
	s := startSink(t, sinkOptions{})
	sh := smarthostTo(t, s, func(c *SmarthostConfig) { c.IdleTimeout = 50 * time.Millisecond })
	sh.Deliver(ctxFor(t), message("m1", []byte("\r\none\r\n"), "a@example.org"))
	// smtpclient.TestPoolIdleSessionsAreClosed checks the pool holds none.
	time.Sleep(300 * time.Millisecond)
	if rs := sh.Deliver(ctxFor(t), message("m2", []byte("\r\ntwo\r\n"), "a@example.org")); rs[0].Outcome != Delivered {
		t.Fatalf("%+v", rs[0])
	}
	if n := s.conns.Load(); n != 2 {
		t.Fatalf("sink saw %d connections, want a new one after the idle close", n)
	}
}

func TestSmarthostBoundsConnections(t *testing.T) {
	s := startSink(t, sinkOptions{})
	sh := smarthostTo(t, s, func(c *SmarthostConfig) { c.MaxConnections = 2 })
	var wg sync.WaitGroup
	results := make([][]Result, 20)
	for i := range results {
		wg.Go(func() {
			results[i] = sh.Deliver(ctxFor(t), message(fmt.Sprint("m", i), []byte("\r\nhi\r\n"), "a@example.org"))
		})
	}
	wg.Wait()
	for i, rs := range results {
		if rs[0].Outcome != Delivered {
			t.Fatalf("message %d: %+v", i, rs[0])
		}
	}
	if n := s.conns.Load(); n > 2 {
		t.Fatalf("sink saw %d connections, limit 2", n)
	}
	if n := len(s.got()); n != 20 {
		t.Fatalf("sink got %d messages", n)
	}
}

func TestSmarthostSizeLimit(t *testing.T) {
	s := startSink(t, sinkOptions{maxBytes: 1000})
	sh := smarthostTo(t, s)
	rs := sh.Deliver(ctxFor(t), message("m1", bytes.Repeat([]byte("x"), 5000), "a@example.org"))
	if rs[0].Outcome != Failed || rs[0].Enhanced != "5.3.4" {
		t.Fatalf("%+v", rs[0])
	}
}

func TestSmarthostUnreachableIsDeferred(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	sh, err := NewSmarthost(SmarthostConfig{Host: "127.0.0.1", Port: port, Hostname: "relay.test", DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sh.Close() })
	rs := sh.Deliver(ctxFor(t), message("m1", []byte("\r\nhi\r\n"), "a@example.org", "b@example.org"))
	if outcomes(rs) != "a@example.org=deferred b@example.org=deferred" || !strings.Contains(rs[0].Text, "connect") {
		t.Fatalf("%+v", rs)
	}
}

func TestSmarthostCancelledContext(t *testing.T) {
	s := startSink(t, sinkOptions{})
	sh := smarthostTo(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rs := sh.Deliver(ctx, message("m1", []byte("\r\nhi\r\n"), "a@example.org"))
	if rs[0].Outcome != Deferred {
		t.Fatalf("%+v", rs[0])
	}
}
