package smtpd_test

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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
