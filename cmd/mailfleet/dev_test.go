package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDevWithSwaks is the README's first promise: start dev, source
// credentials.env, send with swaks, find the message as an .eml file.
func TestDevWithSwaks(t *testing.T) {
	swaks, err := exec.LookPath("swaks")
	if err != nil {
		t.Fatal("swaks is not installed: run hack/install-test-deps.sh (make test does)")
	}
	p := startDev(t)
	e := p.env
	runs := []struct {
		name string
		args []string
	}{
		{"STARTTLS with label", []string{"--port", e["MAILFLEET_SMTP_PORT"], "--tls",
			"--auth-user", e["MAILFLEET_API_USER"] + "#" + e["MAILFLEET_LABEL_ID"]}},
		{"implicit TLS", []string{"--port", e["MAILFLEET_SMTPS_PORT"], "--tlsc",
			"--auth-user", e["MAILFLEET_API_USER"]}},
	}
	for i, run := range runs {
		t.Run(run.name, func(t *testing.T) {
			args := append([]string{"--server", "127.0.0.1", "--tls-verify", "--tls-ca-path", e["MAILFLEET_CA_FILE"],
				"--auth", "LOGIN", "--auth-password", e["MAILFLEET_API_KEY"],
				"--from", "me@example.com", "--to", "you@example.com",
				"--header", "Subject: swaks " + run.name, "--body", "hello from swaks"}, run.args...)
			out, err := exec.Command(swaks, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("swaks: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), "#Queued") {
				t.Fatalf("swaks transcript has no #Queued:\n%s", out)
			}
			files := p.waitForMail(t, i+1)
			found := false
			for _, f := range files {
				b, _ := os.ReadFile(f)
				if strings.Contains(string(b), "Subject: swaks "+run.name) {
					found = true
					if !strings.Contains(string(b), "X-Mailfleet-Account: demo\r\n") || !strings.Contains(string(b), "hello from swaks") {
						t.Fatalf("delivered message:\n%s", b)
					}
					if hasLabel := strings.Contains(string(b), "X-Mailfleet-Label: 1001\r\n"); hasLabel != strings.Contains(run.name, "label") {
						t.Fatalf("label header present = %v in:\n%s", hasLabel, b)
					}
				}
			}
			if !found {
				t.Fatalf("no delivered .eml with the subject of this run among %v", files)
			}
		})
	}
	if code, body := httpStatus(t, "http://"+p.metrics+"/metrics"); code != 200 ||
		!strings.Contains(body, `mailfleet_relay_messages_total{account="demo",label="1001",outcome="accepted",reason=""} 1`) {
		t.Fatalf("metrics %d:\n%s", code, body)
	}
	if strings.Contains(p.stderr.String(), e["MAILFLEET_API_KEY"]) {
		t.Fatal("the key appears in the relay's log")
	}
	// Issue 12.9: stdout here is a pipe, as in a CI log or a file.
	if out := p.stdout.String(); strings.Contains(out, e["MAILFLEET_API_KEY"]) || !strings.Contains(out, `--auth-password "$MAILFLEET_API_KEY"`) {
		t.Fatalf("the announcement on a non-terminal shows the key, or does not refer to credentials.env:\n%s", out)
	}
}

func TestIsTerminal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	if isTerminal(w) || isTerminal(&strings.Builder{}) || !isTerminal(null) {
		t.Fatal("isTerminal: want false for a pipe and a buffer, true for a character device")
	}
}

// TestDevKeepsItsKey restarts dev on the same data directory: scripts that
// sourced credentials.env keep working.
func TestDevKeepsItsKey(t *testing.T) {
	first := startDev(t)
	first.cmd.Process.Signal(syscall.SIGTERM)
	<-first.exited
	second := startDevIn(t, first.dataDir)
	if second.env["MAILFLEET_API_KEY"] != first.env["MAILFLEET_API_KEY"] {
		t.Fatal("dev made a new key on restart")
	}
}

// TestSIGTERMDrains signals the relay process: readiness drops, new sessions
// get 421, the open session finishes its message and is then told 421, and
// the process exits 0.
func TestSIGTERMDrains(t *testing.T) {
	p := startDev(t)
	conn, err := tls.Dial("tcp", p.addr("MAILFLEET_SMTPS_PORT"), p.tlsConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := &lineConn{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.reply()
	c.cmd("EHLO client.test")
	plain := base64.StdEncoding.EncodeToString([]byte("\x00demo\x00" + p.env["MAILFLEET_API_KEY"]))
	c.expectPrefix("AUTH PLAIN "+plain, "235 ")
	// A message in progress when SIGTERM arrives is finished; a session
	// between messages would be told 421 at its next command.
	c.expectPrefix("MAIL FROM:<me@example.com>", "250 ")

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if code, _ := httpStatus(t, "http://"+p.metrics+"/readyz"); code == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz still ready after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	late, err := net.Dial("tcp", p.addr("MAILFLEET_SMTP_PORT"))
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	lc := &lineConn{t: t, conn: late, r: bufio.NewReader(late)}
	if got := lc.reply(); got != "421 4.3.2 localhost Service shutting down, try again later" {
		t.Fatalf("new session during drain: %q", got)
	}

	c.expectPrefix("RCPT TO:<you@example.com>", "250 ")
	c.expectPrefix("DATA", "354 ")
	c.write("Subject: during drain\r\n\r\nstill accepted\r\n")
	c.expectPrefix(".", "250 2.0.0 #")
	c.expectPrefix("MAIL FROM:<me@example.com>", "421 4.3.2 ")
	select {
	case <-p.exited:
		if p.waitErr != nil {
			t.Fatalf("exit after drain: %v", p.waitErr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("process did not exit after its last session ended")
	}
	// Delivery may not have run before the exit; the message is in the
	// spool or the mail directory, and the next start delivers it.
	restarted := startDevIn(t, p.dataDir)
	restarted.waitForMail(t, 1)
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(binary, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "mailfleet ") {
		t.Fatalf("version: %v %q", err, out)
	}
}

func TestRelayRefusesABadConfig(t *testing.T) {
	path := t.TempDir() + "/relay.yaml"
	os.WriteFile(path, []byte("spoolDir: /tmp/x\nlistners: []\n"), 0o600)
	out, err := exec.Command(binary, "relay", "--config", path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `unknown field "listners"`) {
		t.Fatalf("relay with a typo in its config: %v %q", err, out)
	}
}

// lineConn is a minimal line-oriented SMTP client for these tests.
type lineConn struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

// dialLogin opens a plain SMTP session to addr and logs in with AUTH PLAIN;
// the connection closes when the test ends.
func dialLogin(t *testing.T, addr, user, key string) *lineConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &lineConn{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.reply()
	c.cmd("EHLO client.test")
	c.expectPrefix("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+key)), "235 ")
	return c
}

func (c *lineConn) write(s string) {
	c.t.Helper()
	c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.conn.Write([]byte(s)); err != nil {
		c.t.Fatal(err)
	}
}

func (c *lineConn) reply() string {
	c.t.Helper()
	c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("read reply: %v", err)
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			return strings.Join(lines, "\n")
		}
	}
}

func (c *lineConn) cmd(line string) string {
	c.t.Helper()
	c.write(line + "\r\n")
	return c.reply()
}

func (c *lineConn) expectPrefix(line, want string) {
	c.t.Helper()
	if got := c.cmd(line); !strings.HasPrefix(got, want) {
		c.t.Fatalf("%s: got %q, want %q...", line, got, want)
	}
}

// TestDevCurlExample runs the curl example dev prints, as printed, and
// finds the message delivered; then a form with an inline image, which
// arrives at the delivery directory byte for byte.
func TestDevCurlExample(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl is not installed: run hack/install-test-deps.sh (make test does)")
	}
	p := startDev(t)
	example := regexp.MustCompile(`(?s)\n  (curl --cacert .*?/v1/mail/send)\n`).FindStringSubmatch(p.stdout.String())
	if example == nil {
		t.Fatalf("no curl example in:\n%s", p.stdout)
	}
	cmd := exec.Command("bash", "-c", example[1])
	for k, v := range p.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Env = append(cmd.Env, "PATH="+filepath.Dir(curl))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"queued":true`) {
		t.Fatalf("the printed example: %v\n%s", err, out)
	}
	mailContaining(t, p, 1, "first message through the API")

	image := make([]byte, 30_000)
	rand.Read(image)
	imagePath := filepath.Join(t.TempDir(), "logo.png")
	if err := os.WriteFile(imagePath, image, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(curl, "--silent", "--show-error", "--fail-with-body", "--cacert", p.env["MAILFLEET_CA_FILE"],
		"--user", p.env["MAILFLEET_API_USER"]+":"+p.env["MAILFLEET_API_KEY"],
		"--form-string", "from=me@example.com", "--form-string", "to=you@example.com",
		"--form-string", "subject=inline logo", "--form-string", `html=<img src="cid:logo.png">`,
		"--form", "inline=@"+imagePath+";type=image/png",
		"https://127.0.0.1:"+p.env["MAILFLEET_API_PORT"]+"/v1/mail/send").CombinedOutput()
	if err != nil {
		t.Fatalf("curl form: %v\n%s", err, out)
	}
	eml := mailContaining(t, p, 2, "Subject: inline logo")
	if got := inlinePart(t, eml, "<logo.png>"); !bytes.Equal(got, image) {
		t.Fatalf("the inline image was delivered as %d bytes, not the %d sent", len(got), len(image))
	}
}

// mailContaining waits for n delivered messages and returns the one that
// holds text.
func mailContaining(t *testing.T, p *devProcess, n int, text string) []byte {
	t.Helper()
	for _, f := range p.waitForMail(t, n) {
		b, _ := os.ReadFile(f)
		if bytes.Contains(b, []byte(text)) {
			return b
		}
	}
	t.Fatalf("no delivered message holds %q", text)
	return nil
}

// inlinePart is the decoded body of the part with Content-ID cid, in a
// multipart/related message.
func inlinePart(t *testing.T, eml []byte, cid string) []byte {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(eml))
	if err != nil {
		t.Fatal(err)
	}
	_, params, _ := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		part, err := mr.NextRawPart()
		if err != nil {
			t.Fatalf("no part %s: %v", cid, err)
		}
		if part.Header.Get("Content-Id") == cid {
			b, _ := io.ReadAll(part)
			decoded, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(string(b), "\r\n", ""))
			if err != nil {
				t.Fatal(err)
			}
			return decoded
		}
	}
}
