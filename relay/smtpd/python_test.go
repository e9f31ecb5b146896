package smtpd_test

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPythonSmtplibSeedExample runs the seeds' client, Python's smtplib, with
// a multipart/related message and an inline image, and checks the stored
// message is byte-identical to what smtplib was given.
func TestPythonSmtplibSeedExample(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is not installed: run hack/install-test-deps.sh (make test does)")
	}
	env := startRelay(t)
	sent := filepath.Join(t.TempDir(), "sent.eml")
	cmd := exec.Command(python, "testdata/send_related.py")
	cmd.Env = append(os.Environ(),
		"MAILFLEET_SMTP_PORT="+portOf(t, env.addr("submission")),
		"MAILFLEET_API_USER="+userMain,
		"MAILFLEET_LABEL_ID=1001",
		"MAILFLEET_API_KEY="+env.keys[userMain],
		"MAILFLEET_CA_FILE="+filepath.Join(env.tlsDir, "ca.crt"),
		"SENT_FILE="+sent,
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	if !queuedReply.MatchString(strings.TrimSpace(string(out))) {
		t.Fatalf("smtplib saw %q", out)
	}
	want, err := os.ReadFile(sent)
	if err != nil {
		t.Fatal(err)
	}
	stored := env.stored()
	if len(stored) != 1 {
		t.Fatalf("stored %d messages", len(stored))
	}
	for _, m := range stored {
		if m.Env.LabelID != "1001" || !m.Env.TLS {
			t.Fatalf("envelope %+v", m.Env)
		}
		if !bytes.Equal(m.Body, want) {
			t.Fatalf("stored body differs from what smtplib sent (%d vs %d bytes)", len(m.Body), len(want))
		}
		if !bytes.Contains(m.Body, []byte("Content-ID: <logo>")) {
			t.Fatal("inline image part missing")
		}
	}
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// TestPythonSmtplibSMTPAPI: Python's smtplib, after STARTTLS and AUTH
// LOGIN, sends one message with an X-SMTPAPI header (base64, then plain
// JSON): the relay queues one copy per address of its "to", instead of
// the RCPT TO address, each with its own substitutions in the subject and
// the body, the label and customArgs the header names, and no X-SMTPAPI
// field left in what is delivered.
func TestPythonSmtplibSMTPAPI(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is not installed: run hack/install-test-deps.sh (make test does)")
	}
	for _, plain := range []string{"", "1"} {
		env := startRelay(t)
		cmd := exec.Command(python, "testdata/send_smtpapi.py")
		cmd.Env = append(os.Environ(),
			"MAILFLEET_SMTP_PORT="+portOf(t, env.addr("submission")),
			"MAILFLEET_API_USER="+userMain,
			"MAILFLEET_API_KEY="+env.keys[userMain],
			"MAILFLEET_CA_FILE="+filepath.Join(env.tlsDir, "ca.crt"),
			"MAILFLEET_SMTPAPI_PLAIN="+plain,
		)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("smtplib: %v\n%s", err, out)
		}
		m := queuedReply.FindStringSubmatch(strings.TrimSpace(string(out)))
		if m == nil {
			t.Fatalf("smtplib saw %q", out)
		}
		stored := env.stored()
		want := map[string][2]string{"ann@example.com": {"Ann", "199"}, "bob@example.net": {"Bob", "299"}}
		if len(stored) != len(want) {
			t.Fatalf("stored %d messages, want one per address of to", len(stored))
		}
		for i, rcpt := range []string{"ann@example.com", "bob@example.net"} {
			msg, ok := stored[m[1]+"-"+strconv.Itoa(i)]
			if !ok || len(msg.Env.To) != 1 || msg.Env.To[0] != rcpt {
				t.Fatalf("copy %d: %+v", i, msg.Env)
			}
			if msg.Env.LabelID != "1001" || msg.Env.CustomArgs["order"] != "42" {
				t.Fatalf("copy %d: label %q, customArgs %v", i, msg.Env.LabelID, msg.Env.CustomArgs)
			}
			body := string(msg.Body)
			if !strings.Contains(body, "Subject: Hello "+want[rcpt][0]+"\r\n") ||
				!strings.Contains(body, "Dear "+want[rcpt][0]+", you owe "+want[rcpt][1]+".") {
				t.Fatalf("copy %d for %s:\n%s", i, rcpt, body)
			}
			if strings.Contains(strings.ToLower(body), "x-smtpapi") || strings.Contains(body, "%name%") {
				t.Fatalf("copy %d still holds the header or a tag:\n%s", i, body)
			}
		}
	}
}
