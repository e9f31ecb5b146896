package smtpd_test

import (
	"strings"
	"testing"
)

// TestSMTPAPIOverTheWire runs X-SMTPAPI through the real engine, over
// implicit TLS after AUTH LOGIN: a header folded over lines fans out to
// its "to" with substitutions, and the refusals reach the client as
// 550 5.6.0 with their reason, the session going on after each.
func TestSMTPAPIOverTheWire(t *testing.T) {
	env := startRelay(t)
	c := dialRawTLS(t, env.addr("smtps"), env.clientTLS())
	c.reply() // greeting
	c.cmd("EHLO ifaxin.com")
	c.expect("AUTH LOGIN "+b64(userMain), "334 UGFzc3dvcmQ6")
	c.expect(b64(env.keys[userMain]), "235 2.7.0 Authentication successful")

	msg := "From: support@ifaxin.com\r\n" +
		"X-SMTPAPI: {\"to\": [\"ann@example.com\", \"bob@example.net\"],\r\n" +
		"\t\"sub\": {\"%name%\": [\"Ann\", \"Bob\"]}, \"labelId\": 1001}\r\n" +
		"Subject: Hello %name%\r\n\r\nDear %name%\r\n"
	m := queuedReply.FindStringSubmatch(c.send("support@ifaxin.com", "list@ifaxin.com", msg))
	if m == nil {
		t.Fatal("the fan-out was not queued")
	}
	stored := env.stored()
	for i, rcpt := range map[string]string{"0": "ann@example.com", "1": "bob@example.net"} {
		copyOf, ok := stored[m[1]+"-"+i]
		name := map[string]string{"0": "Ann", "1": "Bob"}[i]
		if !ok || strings.Join(copyOf.Env.To, ",") != rcpt || copyOf.Env.LabelID != "1001" ||
			string(copyOf.Body) != "From: support@ifaxin.com\r\nSubject: Hello "+name+"\r\n\r\nDear "+name+"\r\n" {
			t.Fatalf("copy %s: %+v %q", i, copyOf.Env, copyOf.Body)
		}
	}
	if len(stored) != 2 {
		t.Fatalf("stored %d messages, want 2", len(stored))
	}

	for _, tt := range []struct{ name, head, want string }{
		{"malformed JSON", "X-SMTPAPI: {\"to\": [\r\n", "550 5.6.0 X-SMTPAPI: malformed JSON"},
		{"two fields", "X-SMTPAPI: {}\r\nx-smtpapi: {}\r\n", "550 5.6.0 the message has 2 X-SMTPAPI fields; send one"},
		{"a suspended label", "X-SMTPAPI: {\"labelId\": \"1002\"}\r\n", "550 5.6.0 labelId \"1002\" is not an active label of this account"},
	} {
		got := c.send("support@ifaxin.com", "list@ifaxin.com", "From: support@ifaxin.com\r\n"+tt.head+"\r\nx\r\n")
		if !strings.HasPrefix(got, tt.want) {
			t.Fatalf("%s: reply %q, want %q", tt.name, got, tt.want)
		}
	}
	if got := env.stored(); len(got) != 2 {
		t.Fatalf("stored %d messages after the refusals, want the 2 copies only", len(got))
	}
}
