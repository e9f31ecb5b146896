package smtpclient

import (
	"errors"
	"strings"
	"testing"
)

func TestDialRetriesOpportunisticTLSInPlain(t *testing.T) {
	s := startServer(t, "STARTTLS")
	var opened, closed, retries int
	p := paramsFor(s)
	p.TLS = TLSOpportunistic
	p.OnOpened = func() { opened++ }
	p.OnClosed = func() { closed++ }
	p.OnPlainRetry = func(error) { retries++ }
	c, err := Dial(ctxFor(t), p)
	if err != nil {
		t.Fatal(err)
	}
	c.Quit()
	cmds, _ := s.got()
	if retries != 1 || s.conns.Load() != 2 || count(cmds, "STARTTLS") != 1 {
		t.Fatalf("%d plain retries over %d connections, commands %q; want one retry without STARTTLS", retries, s.conns.Load(), cmds)
	}
	if opened != 2 || closed != 2 {
		t.Fatalf("%d connections opened, %d closed; want 2 and 2", opened, closed)
	}
}

func TestDialRequiredTLSDoesNotFallBack(t *testing.T) {
	s := startServer(t, "STARTTLS")
	p := paramsFor(s)
	p.TLS = TLSRequired
	p.OnPlainRetry = func(error) { t.Error("required TLS retried in plain text") }
	_, err := Dial(ctxFor(t), p)
	if err == nil || !strings.Contains(err.Error(), "STARTTLS with") || s.conns.Load() != 1 {
		t.Fatalf("Dial = %v after %d connections; want one failed STARTTLS", err, s.conns.Load())
	}
}

func TestDialRefusedGreetingCarriesTheReply(t *testing.T) {
	s := startServer(t)
	s.script("EHLO", "554 5.7.1 go away")
	s.script("HELO", "554 5.7.1 go away")
	_, err := Dial(ctxFor(t), paramsFor(s))
	var re *ReplyError
	if !errors.As(err, &re) || re.Cmd != "HELO" || re.Reply.Code != 554 || re.Reply.Enhanced != "5.7.1" {
		t.Fatalf("Dial = %v, want the HELO refusal", err)
	}
}
