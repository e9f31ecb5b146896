package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfleet/mailfleet/relay/events"
)

// TestBounceDrill is the suppression list's drill: a smarthost answers 550
// 5.1.1 for one address; after the relay's first message to it bounces, the
// next is refused at RCPT (550 5.1.1) with a suppressed event at the
// account's webhook, and so it is after the relay is stopped and started
// again on the same queue. Mail to other addresses flows all along.
func TestBounceDrill(t *testing.T) {
	const secret = "whsec-bounce-drill-0123456789"
	sink := startRefusingSink(t, "gone@example.com")
	rcv := newDrillReceiver(t, secret)
	sinkHost, sinkPort, _ := net.SplitHostPort(sink)
	key, cfgFile := writeWebhookRelay(t, t.TempDir(), rcv.url()+"/events", secret,
		fmt.Sprintf("{smarthost: {name: sink, host: %s, port: %s, tls: none}}", sinkHost, sinkPort))

	relay := startProcess(t, "relay", "--config", cfgFile)
	c := dialLogin(t, relay.waitLog(t, "listening", "listener", "smtp")["address"].(string), "acme", key)
	sendTo(c, "gone@example.com", "first")
	deadline := time.Now().Add(30 * time.Second)
	for !refused(c, "gone@example.com") {
		if time.Now().After(deadline) {
			t.Fatal("the bounced address was never refused at RCPT")
		}
		time.Sleep(100 * time.Millisecond)
	}
	sendTo(c, "ok@example.com", "to another address")
	c.expectPrefix("QUIT", "221 ")
	waitForEvent(t, rcv, events.Suppressed)
	relay.stop(t)

	relay = startProcess(t, "relay", "--config", cfgFile)
	c = dialLogin(t, relay.waitLog(t, "listening", "listener", "smtp")["address"].(string), "acme", key)
	if !refused(c, "gone@example.com") {
		t.Fatal("the suppression did not survive the relay's restart")
	}
	c.expectPrefix("QUIT", "221 ")
	relay.stop(t)
}

// sendTo sends one message to rcpt in the open session.
func sendTo(c *lineConn, rcpt, subject string) {
	c.t.Helper()
	c.expectPrefix("MAIL FROM:<me@example.com>", "250 ")
	c.expectPrefix("RCPT TO:<"+rcpt+">", "250 ")
	c.expectPrefix("DATA", "354 ")
	c.write("Subject: " + subject + "\r\n\r\nhello\r\n")
	c.expectPrefix(".", "250 ")
}

// refused reports whether rcpt is refused at RCPT as suppressed; the
// transaction is reset either way.
func refused(c *lineConn, rcpt string) bool {
	c.t.Helper()
	c.expectPrefix("MAIL FROM:<me@example.com>", "250 ")
	reply := c.cmd("RCPT TO:<" + rcpt + ">")
	c.expectPrefix("RSET", "250 ")
	return strings.HasPrefix(reply, "550 5.1.1 ") && strings.Contains(reply, "suppressed")
}

func waitForEvent(t *testing.T, rcv *drillReceiver, typ events.Type) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		rcv.mu.Lock()
		n := rcv.types[typ]
		rcv.mu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event reached the webhook", typ)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startRefusingSink is a smarthost that answers 550 5.1.1 at RCPT for
// refuse and takes everything else.
func startRefusingSink(t *testing.T, refuse string) string {
	t.Helper()
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return refusingSession{refuse}, nil }))
	srv.Domain = "sink.test"
	srv.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

type refusingSession struct{ refuse string }

func (refusingSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s refusingSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if to == s.refuse {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	return nil
}
func (refusingSession) Data(r io.Reader) error { _, err := io.Copy(io.Discard, r); return err }
func (refusingSession) Reset()                 {}
func (refusingSession) Logout() error          { return nil }
