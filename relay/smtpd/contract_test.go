package smtpd_test

import (
	"regexp"
	"strings"
	"testing"
)

var queuedReply = regexp.MustCompile(`^250 2\.0\.0 #(\d{13}_\d{8}_[0-9a-f]{6}\.test-node)#Queued$`)

// TestSeedTranscript replays the submission contract's sample session line by line.
func TestSeedTranscript(t *testing.T) {
	env := startRelay(t)
	c := dialRaw(t, env.addr("smtp"))
	if got := c.reply(); got != "220 mx.test ESMTP mailfleet ready" {
		t.Fatalf("greeting = %q", got)
	}
	c.expect("EHLO ifaxin.com", strings.Join([]string{
		"250-mx.test Hello ifaxin.com",
		"250-PIPELINING",
		"250-8BITMIME",
		"250-SIZE 16000000",
		"250-STARTTLS",
		"250-ENHANCEDSTATUSCODES",
		"250 AUTH LOGIN PLAIN",
	}, "\n"))
	c.expect("AUTH LOGIN "+b64(userMain), "334 UGFzc3dvcmQ6")
	c.expect(b64(env.keys[userMain]), "235 2.7.0 Authentication successful")
	c.expect("MAIL FROM:<support@ifaxin.com>", "250 2.1.0 sender <support@ifaxin.com> OK")
	c.expect("RCPT TO:<ben@ifaxin.com>", "250 2.1.5 recipient <ben@ifaxin.com> OK")
	c.expect("DATA", "354 go ahead")
	c.write("Subject: hi\r\n\r\nhello ben\r\n")
	got := c.cmd(".")
	m := queuedReply.FindStringSubmatch(got)
	if m == nil {
		t.Fatalf("end of data: got %q, want 250 2.0.0 #<id>#Queued", got)
	}
	c.expect("QUIT", "221 2.0.0 mx.test closing connection")

	stored := env.stored()
	msg, ok := stored[m[1]]
	if !ok {
		t.Fatalf("message %s is not in the spool (have %v)", m[1], stored)
	}
	if string(msg.Body) != "Subject: hi\r\n\r\nhello ben\r\n" {
		t.Fatalf("stored body = %q", msg.Body)
	}
	if msg.Env.APIUser != userMain || msg.Env.From != "support@ifaxin.com" || len(msg.Env.To) != 1 || msg.Env.To[0] != "ben@ifaxin.com" {
		t.Fatalf("stored envelope = %+v", msg.Env)
	}
}

func TestAuthForms(t *testing.T) {
	env := startRelay(t)
	key := env.keys[userMain]
	tests := []struct {
		name     string
		exchange [][2]string // command, exact reply
		label    string
	}{
		{"LOGIN with initial response", [][2]string{
			{"AUTH LOGIN " + b64(userMain), "334 UGFzc3dvcmQ6"},
			{b64(key), "235 2.7.0 Authentication successful"},
		}, ""},
		{"LOGIN without initial response", [][2]string{
			{"AUTH LOGIN", "334 VXNlcm5hbWU6"},
			{b64(userMain), "334 UGFzc3dvcmQ6"},
			{b64(key), "235 2.7.0 Authentication successful"},
		}, ""},
		{"lower-case mechanism", [][2]string{
			{"auth login " + b64(userMain), "334 UGFzc3dvcmQ6"},
			{b64(key), "235 2.7.0 Authentication successful"},
		}, ""},
		{"PLAIN with initial response", [][2]string{
			{"AUTH PLAIN " + b64("\x00"+userMain+"\x00"+key), "235 2.7.0 Authentication successful"},
		}, ""},
		{"PLAIN without initial response", [][2]string{
			{"AUTH PLAIN", "334 "},
			{b64("\x00" + userMain + "\x00" + key), "235 2.7.0 Authentication successful"},
		}, ""},
		{"PLAIN with matching authzid", [][2]string{
			{"AUTH PLAIN " + b64(userMain+"\x00"+userMain+"\x00"+key), "235 2.7.0 Authentication successful"},
		}, ""},
		{"LOGIN with label", [][2]string{
			{"AUTH LOGIN " + b64(userMain+"#1001"), "334 UGFzc3dvcmQ6"},
			{b64(key), "235 2.7.0 Authentication successful"},
		}, "1001"},
		{"PLAIN with label", [][2]string{
			{"AUTH PLAIN " + b64("\x00"+userMain+"#1001\x00"+key), "235 2.7.0 Authentication successful"},
		}, "1001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, env.addr("smtp"))
			c.reply()
			c.cmd("EHLO client.test")
			for _, step := range tt.exchange {
				c.expect(step[0], step[1])
			}
			got := c.send("a@ifaxin.com", "b@example.com", "Subject: x\r\n\r\nbody\r\n")
			m := queuedReply.FindStringSubmatch(got)
			if m == nil {
				t.Fatalf("got %q", got)
			}
			if msg := env.stored()[m[1]]; msg.Env.LabelID != tt.label || msg.Env.APIUser != userMain {
				t.Fatalf("stored account/label = %q/%q, want %q/%q", msg.Env.APIUser, msg.Env.LabelID, userMain, tt.label)
			}
		})
	}
}

func TestAuthRefusals(t *testing.T) {
	env := startRelay(t)
	key := env.keys[userMain]
	failed := "535 5.7.8 Authentication credentials invalid"
	tests := []struct {
		name, cmd, want string
	}{
		{"wrong key", "AUTH PLAIN " + b64("\x00"+userMain+"\x00"+"wrong"), failed},
		{"unknown user", "AUTH PLAIN " + b64("\x00nobody\x00"+key), failed},
		{"label of another account", "AUTH PLAIN " + b64("\x00"+userMain+"#2001\x00"+key), failed},
		{"unknown label", "AUTH PLAIN " + b64("\x00"+userMain+"#9999\x00"+key), failed},
		{"suspended label", "AUTH PLAIN " + b64("\x00"+userMain+"#1002\x00"+key), failed},
		{"suspended account", "AUTH PLAIN " + b64("\x00"+userSuspended+"\x00"+env.keys[userSuspended]), failed},
		{"other account's key", "AUTH PLAIN " + b64("\x00"+userMain+"\x00"+env.keys[userOther]), failed},
		{"authzid of someone else", "AUTH PLAIN " + b64(userOther+"\x00"+userMain+"\x00"+key), failed},
		{"not base64", "AUTH PLAIN !!!", "501 5.5.2 Cannot decode response"},
		{"malformed PLAIN", "AUTH PLAIN " + b64("no-nuls"), "501 5.5.2 Cannot decode response"},
		{"unknown mechanism", "AUTH CRAM-MD5", "504 5.5.4 Unrecognized authentication mechanism"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, env.addr("smtp"))
			c.reply()
			c.cmd("EHLO client.test")
			c.expect(tt.cmd, tt.want)
			c.expect("MAIL FROM:<a@ifaxin.com>", "530 5.7.0 Authentication required")
		})
	}
	t.Run("cancelled", func(t *testing.T) {
		c := dialRaw(t, env.addr("smtp"))
		c.reply()
		c.cmd("EHLO client.test")
		c.expect("AUTH LOGIN", "334 VXNlcm5hbWU6")
		c.expect("*", "501 5.7.0 Authentication cancelled")
	})
	t.Run("twice", func(t *testing.T) {
		c := dialRaw(t, env.addr("smtp"))
		c.login(userMain, key)
		c.expect("AUTH PLAIN "+b64("\x00"+userMain+"\x00"+key), "503 5.5.1 Already authenticated")
	})
}

// TestReplyCodes covers each error code the contract names.
func TestReplyCodes(t *testing.T) {
	env := startRelay(t, func(s *relaySpec) { s.server.MaxRecipients = 2 })
	tests := []struct {
		name  string
		login bool
		steps [][2]string
	}{
		{"MAIL before AUTH", false, [][2]string{{"MAIL FROM:<a@ifaxin.com>", "530 5.7.0 Authentication required"}}},
		{"MAIL before EHLO", false, nil},
		{"SIZE too big", true, [][2]string{{"MAIL FROM:<a@ifaxin.com> SIZE=16000001", "552 5.3.4 Message size exceeds fixed limit"}}},
		{"SIZE at the limit", true, [][2]string{{"MAIL FROM:<a@ifaxin.com> SIZE=16000000 BODY=8BITMIME", "250 2.1.0 sender <a@ifaxin.com> OK"}}},
		{"smtplib's lower-case size", true, [][2]string{{"mail FROM:<a@ifaxin.com> size=100", "250 2.1.0 sender <a@ifaxin.com> OK"}}},
		{"MAIL syntax", true, [][2]string{{"MAIL <a@ifaxin.com>", "501 5.5.4 Syntax: MAIL FROM:<address>"}}},
		{"bad address", true, [][2]string{{"MAIL FROM:<a b@ifaxin.com>", "501 5.1.7 Bad address syntax"}}},
		{"unknown parameter", true, [][2]string{{"MAIL FROM:<a@ifaxin.com> SMTPUTF8", "555 5.5.4 Unsupported parameter SMTPUTF8"}}},
		{"nested MAIL", true, [][2]string{
			{"MAIL FROM:<a@ifaxin.com>", "250 2.1.0 sender <a@ifaxin.com> OK"},
			{"MAIL FROM:<a@ifaxin.com>", "503 5.5.1 Sender already specified"},
		}},
		{"RCPT before MAIL", true, [][2]string{{"RCPT TO:<b@example.com>", "503 5.5.1 Need MAIL command first"}}},
		{"RCPT syntax", true, [][2]string{
			{"MAIL FROM:<>", "250 2.1.0 sender <> OK"},
			{"RCPT <b@example.com>", "501 5.5.4 Syntax: RCPT TO:<address>"},
			{"RCPT TO:<>", "501 5.1.3 Bad recipient address syntax"},
		}},
		{"recipient cap", true, [][2]string{
			{"MAIL FROM:<a@ifaxin.com>", "250 2.1.0 sender <a@ifaxin.com> OK"},
			{"RCPT TO:<b@example.com>", "250 2.1.5 recipient <b@example.com> OK"},
			{"RCPT TO:<c@example.com>", "250 2.1.5 recipient <c@example.com> OK"},
			{"RCPT TO:<d@example.com>", "452 4.5.3 Too many recipients"},
		}},
		{"DATA before RCPT", true, [][2]string{
			{"DATA", "503 5.5.1 Need MAIL command first"},
			{"MAIL FROM:<a@ifaxin.com>", "250 2.1.0 sender <a@ifaxin.com> OK"},
			{"DATA", "503 5.5.1 Need RCPT command first"},
		}},
		{"RSET ends the transaction", true, [][2]string{
			{"MAIL FROM:<a@ifaxin.com>", "250 2.1.0 sender <a@ifaxin.com> OK"},
			{"RSET", "250 2.0.0 OK"},
			{"RCPT TO:<b@example.com>", "503 5.5.1 Need MAIL command first"},
		}},
		{"NOOP VRFY EXPN HELP", false, [][2]string{
			{"NOOP", "250 2.0.0 OK"},
			{"VRFY ben", "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"},
			{"EXPN staff", "502 5.5.1 EXPN not supported"},
			{"HELP", "214 2.0.0 Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT"},
		}},
		{"unknown command", false, [][2]string{{"FOO bar", "500 5.5.2 Command not recognized"}}},
		{"HELO", false, [][2]string{{"HELO client.test", "250 mx.test Hello client.test"}}},
		{"EHLO without a name", false, [][2]string{{"EHLO", "501 5.5.4 Syntax: EHLO hostname"}}},
		{"line too long", false, [][2]string{{"NOOP " + strings.Repeat("x", 3000), "500 5.5.2 Line too long"}, {"NOOP", "250 2.0.0 OK"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, env.addr("smtp"))
			if tt.login {
				c.login(userMain, env.keys[userMain])
			} else {
				c.reply()
				if tt.name == "MAIL before EHLO" {
					c.expect("MAIL FROM:<a@ifaxin.com>", "503 5.5.1 Send EHLO first")
					c.expect("AUTH LOGIN", "503 5.5.1 Send EHLO first")
					return
				}
				if !strings.HasPrefix(tt.name, "HELO") && !strings.HasPrefix(tt.name, "EHLO") {
					c.cmd("EHLO client.test")
				}
			}
			for _, step := range tt.steps {
				c.expect(step[0], step[1])
			}
		})
	}
}

func TestSenderDomainRestriction(t *testing.T) {
	env := startRelay(t)
	c := dialRaw(t, env.addr("smtp"))
	c.login(userRestricted, env.keys[userRestricted])
	c.expect("MAIL FROM:<x@evil.example>", "553 5.7.1 Sender address <x@evil.example> not allowed for this account")
	c.expect("MAIL FROM:<support@IFAXIN.com>", "250 2.1.0 sender <support@IFAXIN.com> OK")
}

func TestTooManyErrorsCloses(t *testing.T) {
	env := startRelay(t, func(s *relaySpec) { s.server.MaxErrors = 3 })
	c := dialRaw(t, env.addr("smtp"))
	c.reply()
	c.expect("X1", "500 5.5.2 Command not recognized")
	c.expect("X2", "500 5.5.2 Command not recognized")
	c.write("X3\r\n")
	if got := c.reply(); got != "500 5.5.2 Command not recognized" {
		t.Fatalf("got %q", got)
	}
	if got := c.reply(); got != "421 4.7.0 mx.test Too many errors, closing connection" {
		t.Fatalf("got %q", got)
	}
}
