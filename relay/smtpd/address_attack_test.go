package smtpd_test

import (
	"fmt"
	"strings"
	"testing"
)

// Attack (issue 12.2): an account allowed only ifaxin.com names a foreign
// sender in a path that a lenient parser accepts and whose last '@' is in an
// allowed domain. Each must be refused as bad syntax (501 5.1.7) before the
// sender check, or by the sender check on the domain the parser found.
func TestAttackSenderDomainBypass(t *testing.T) {
	env := startRelay(t)
	// A session per refusal: the relay closes one after too many errors.
	session := func() *rawClient {
		c := dialRaw(t, env.addr("smtp"))
		c.login(userRestricted, env.keys[userRestricted])
		return c
	}
	for _, from := range []string{
		"<ceo@bank.example,x@ifaxin.com>",
		"<ceo@bank.example x@ifaxin.com>",
		"<@bank.example:ceo@ifaxin.com>",
		"<@ifaxin.com:ceo@bank.example>",
		"<ceo@bank.example@ifaxin.com>",
		"<ceo@bank.example.@ifaxin.com>",
		"<ceo(@ifaxin.com)@bank.example>",
		"<ceo@bank.example\x00@ifaxin.com>",
		"<ceo@[ifaxin.com]>",
		"<ceo@ifaxin.com.>",
	} {
		session().expect("MAIL FROM:"+from, "501 5.1.7 Bad address syntax")
	}
	c := session()
	c.expect("MAIL FROM:<ceo@bank.example>", "553 5.7.1 Sender address <ceo@bank.example> not allowed for this account")
	// A quoted local part may hold '@' and ','; the domain is still the one after it.
	c.expect(`MAIL FROM:<"ceo@ifaxin.com,"@bank.example>`, `553 5.7.1 Sender address <"ceo@ifaxin.com,"@bank.example> not allowed for this account`)
	c.expectPrefix(`MAIL FROM:<"a b>c"@IFAXIN.com>`, "250 ")
	c.expect("RSET", "250 2.0.0 OK")
	c.expectPrefix("MAIL FROM:<orders+eu@ifaxin.com>", "250 ")
	// Recipients go through the same grammar.
	for _, to := range []string{"<a@b.example,c@d.example>", "<@relay.example:a@b.example>", "<a@-b.example>", "<a@[300.1.1.1]>"} {
		c := session()
		c.expectPrefix("MAIL FROM:<orders@ifaxin.com>", "250 ")
		c.expect("RCPT TO:"+to, "501 5.1.3 Bad recipient address syntax")
	}
	c.expectPrefix("RCPT TO:<a@[IPv6:2001:db8::1]>", "250 ")
}

// Attack (issue 12.9): an EHLO name with control characters and escape
// sequences, or of any length, is echoed in the reply, logged and stored
// with the message. Only printable ASCII up to a domain's length goes on.
func TestAttackHeloName(t *testing.T) {
	env := startRelay(t)
	c := dialRaw(t, env.addr("smtp"))
	c.reply()
	const sent = "evil\rX-Injected:\x1b[31m\x00"
	const shown = "evil?X-Injected:?[31m?"
	c.expect("HELO "+sent+strings.Repeat("a", 400), "250 mx.test Hello "+shown+strings.Repeat("a", 255-len(shown)))
	c.expectPrefix("EHLO caf\xc3\xa9.example", "250-mx.test Hello caf??.example")
}

// Attack (issue 12.6): the budget counted messages, so one message to many
// recipients spent one unit. Each recipient is now a unit: an account with
// a budget of 2 a minute cannot send one message to 5.
func TestAttackBudgetPerRecipient(t *testing.T) {
	env := startRelay(t)
	c := dialRaw(t, env.addr("smtp"))
	c.login(userTiny, env.keys[userTiny])
	send := func(rcpts int) string {
		c.expectPrefix("MAIL FROM:<a@ifaxin.com>", "250 ")
		for i := range rcpts {
			c.expectPrefix(fmt.Sprintf("RCPT TO:<r%d@example.com>", i), "250 ")
		}
		c.expect("DATA", "354 go ahead")
		c.write("Subject: x\r\n\r\nbody\r\n.\r\n")
		return c.reply()
	}
	if got := send(5); got != "536 5.7.1 Frequency limited" {
		t.Fatalf("5 recipients on a budget of 2: %q, want 536", got)
	}
	if got := send(2); !queuedReply.MatchString(got) {
		t.Fatalf("2 recipients on a budget of 2: %q", got)
	}
	if got := send(1); got != "536 5.7.1 Frequency limited" {
		t.Fatalf("a third recipient in the minute: %q, want 536", got)
	}
}

// Issue 12.6: an account's messages have at most its maxRecipients (100
// unless set); the next RCPT gets 452 4.5.3 and the message goes on with
// the recipients already accepted.
func TestAccountRecipientCap(t *testing.T) {
	env := startRelay(t)
	c := dialRaw(t, env.addr("smtp"))
	c.login(userMain, env.keys[userMain])
	c.expectPrefix("MAIL FROM:<a@ifaxin.com>", "250 ")
	var rcpts strings.Builder
	for i := range 100 {
		fmt.Fprintf(&rcpts, "RCPT TO:<r%d@example.com>\r\n", i)
	}
	c.write(rcpts.String())
	for range 100 {
		if got := c.reply(); !strings.HasPrefix(got, "250 ") {
			t.Fatalf("RCPT within the cap: %q", got)
		}
	}
	c.expect("RCPT TO:<r100@example.com>", "452 4.5.3 Too many recipients")
	c.expect("DATA", "354 go ahead")
	c.write("Subject: x\r\n\r\nbody\r\n.\r\n")
	if got := c.reply(); !queuedReply.MatchString(got) {
		t.Fatalf("DATA after the cap: %q", got)
	}
	for _, m := range env.stored() {
		if len(m.Env.To) != 100 {
			t.Fatalf("queued with %d recipients, want the 100 accepted", len(m.Env.To))
		}
	}
}

// Attack (issue 12.3): an account allowed only ifaxin.com sends with an
// allowed envelope and From: ceo@bank.example, which is what recipients
// see. With the default sender policy every From address must be allowed
// too; an account whose policy is Envelope checks MAIL FROM only.
func TestAttackHeaderFromSpoofing(t *testing.T) {
	env := startRelay(t)
	send := func(user, header string) string {
		c := dialRaw(t, env.addr("smtp"))
		c.login(user, env.keys[user])
		return c.send("orders@ifaxin.com", "buyer@example.org", header+"Subject: x\r\n\r\nbody\r\n")
	}
	for _, tc := range []struct{ header, want string }{
		{"From: CEO <ceo@bank.example>\r\n", "550 5.7.1 From header address <ceo@bank.example> not allowed for this account"},
		{"From: orders@ifaxin.com, ceo@bank.example\r\n", "550 5.7.1 From header address <ceo@bank.example> not allowed for this account"},
		{"From: orders@ifaxin.com\r\nFrom: ceo@bank.example\r\n", "550 5.7.1 From header address <ceo@bank.example> not allowed for this account"},
		{"From: =?utf-8?q?orders=40ifaxin.com?= <ceo@bank.example>\r\n", "550 5.7.1 From header address <ceo@bank.example> not allowed for this account"},
		{"To: buyer@example.org\r\n", "550 5.6.0 The message has no From header this account may use"},
		{"From: not an address\r\n", "550 5.6.0 The message has no From header this account may use"},
	} {
		if got := send(userRestricted, tc.header); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.header, got, tc.want)
		}
	}
	for _, header := range []string{
		"From: Orders <orders@IFAXIN.com>\r\n",
		"From: =?utf-8?q?B=C3=BCro?= <buero@ifaxin.com>\r\n",
		"From: \"ceo@bank.example\" <orders@ifaxin.com>\r\n",
	} {
		if got := send(userRestricted, header); !queuedReply.MatchString(got) {
			t.Errorf("%q: got %q, want 250", header, got)
		}
	}
	if got := send(userEnvelope, "From: CEO <ceo@bank.example>\r\n"); !queuedReply.MatchString(got) {
		t.Errorf("sender policy Envelope: got %q, want 250", got)
	}
	if got := send(userMain, "From: CEO <ceo@bank.example>\r\n"); !queuedReply.MatchString(got) {
		t.Errorf("an account with no allowed domains: got %q, want 250", got)
	}
}
