package smtpclient

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// transaction is From s@x.example to rcpts with a body that needs
// dot-stuffing.
func transaction(rcpts ...string) Transaction {
	body := "Subject: x\r\n\r\n.dot\r\n"
	return Transaction{
		From: "s@x.example", Rcpts: rcpts, Size: int64(len(body)),
		Body: func(w io.Writer) error { _, err := io.WriteString(w, body); return err },
	}
}

func TestTransactPerRecipientReplies(t *testing.T) {
	for name, ext := range map[string][]string{
		"pipelining": {"PIPELINING", "SIZE 1000", "8BITMIME"},
		"one by one": {"SIZE 1000", "8BITMIME"},
	} {
		t.Run(name, func(t *testing.T) {
			s := startServer(t, ext...)
			s.script("RCPT TO:<b@x.example>", "550 5.1.1 no such user")
			s.script("RCPT TO:<c@x.example>", "451 4.2.1 busy")
			s.script(".", "250 2.0.0 queued as 1")
			replies, err := dialTo(t, s).Transact(ctxFor(t), transaction("a@x.example", "b@x.example", "c@x.example"))
			if err != nil {
				t.Fatal(err)
			}
			want := []Reply{{250, "2.0.0", "queued as 1"}, {550, "5.1.1", "no such user"}, {451, "4.2.1", "busy"}}
			if !slices.Equal(replies, want) {
				t.Fatalf("replies %+v, want %+v", replies, want)
			}
			cmds, bodies := s.got()
			if !slices.Contains(cmds, "MAIL FROM:<s@x.example> BODY=8BITMIME SIZE=20") {
				t.Fatalf("commands %q lack the MAIL parameters", cmds)
			}
			if len(bodies) != 1 || bodies[0] != "Subject: x\r\n\r\n..dot\r\n" {
				t.Fatalf("bodies %q, want one, dot-stuffed", bodies)
			}
		})
	}
}

func TestTransactRefusedMailSendsNoRecipients(t *testing.T) {
	s := startServer(t)
	s.script("MAIL", "451 4.3.0 try later")
	replies, err := dialTo(t, s).Transact(ctxFor(t), transaction("a@x.example", "b@x.example"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range replies {
		if r.Code != 451 {
			t.Fatalf("replies %+v, want MAIL's for each", replies)
		}
	}
	if cmds, _ := s.got(); slices.ContainsFunc(cmds, func(c string) bool { return strings.HasPrefix(c, "RCPT") || c == "DATA" }) {
		t.Fatalf("commands %q went on after the refused MAIL", cmds)
	}
}

func TestTransactConnectionLostDuringBody(t *testing.T) {
	s := startServer(t, "PIPELINING")
	s.script("RCPT TO:<b@x.example>", "550 5.1.1 no such user")
	s.mu.Lock()
	s.cut = true
	s.mu.Unlock()
	replies, err := dialTo(t, s).Transact(ctxFor(t), transaction("a@x.example", "b@x.example"))
	if err == nil || len(replies) != 2 {
		t.Fatalf("Transact = %+v, %v; want replies and the broken session's error", replies, err)
	}
	if replies[0] != (Reply{}) || replies[1].Code != 550 {
		t.Fatalf("replies %+v, want the zero Reply for the accepted recipient and 550 for the other", replies)
	}
}

func TestTransactRefusedResetIsRetryable(t *testing.T) {
	s := startServer(t, "PIPELINING")
	s.script("RSET", "421 4.4.2 closing")
	tr := transaction("a@x.example")
	tr.Reset = true
	replies, err := dialTo(t, s).Transact(ctxFor(t), tr)
	var re *ReplyError
	if replies != nil || !errors.As(err, &re) || re.Cmd != "RSET" || re.Reply.Code != 421 {
		t.Fatalf("Transact = %+v, %v; want no replies and the RSET refusal", replies, err)
	}
}

func TestTransactUnsupported(t *testing.T) {
	s := startServer(t, "SIZE 100")
	c := dialTo(t, s)
	big := transaction("a@x.example")
	big.Size = 1000
	utf8 := transaction("ü@x.example")
	for tr, want := range map[*Transaction]string{&big: "5.3.4", &utf8: "5.6.7"} {
		replies, err := c.Transact(ctxFor(t), *tr)
		var ue *UnsupportedError
		if replies != nil || !errors.As(err, &ue) || ue.Enhanced != want {
			t.Fatalf("Transact = %+v, %v; want an UnsupportedError %s", replies, err, want)
		}
	}
	if cmds, _ := s.got(); slices.ContainsFunc(cmds, func(c string) bool { return strings.HasPrefix(c, "MAIL") }) {
		t.Fatalf("commands %q: MAIL sent for a message the server cannot take", cmds)
	}
	// The session is still good for a message the server can take.
	if replies, err := c.Transact(ctxFor(t), transaction("a@x.example")); err != nil || replies[0].Code != 250 {
		t.Fatalf("after the refusals: %+v, %v", replies, err)
	}
}
