package delivery

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// smtpSinkBinary finds Postfix's smtp-sink where Debian installs it.
func smtpSinkBinary(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("smtp-sink"); err == nil {
		return p
	}
	t.Fatal("Postfix's smtp-sink is not installed: run `make test-deps` (hack/install-test-deps.sh installs postfix)")
	return ""
}

// postfixSink runs smtp-sink on a free loopback port with args (its options)
// and returns the port and the directory it dumps messages into.
func postfixSink(t *testing.T, args ...string) (port int, dumpDir string) {
	t.Helper()
	bin := smtpSinkBinary(t)
	// smtp-sink drops root privileges to nobody, who must be able to write
	// the dumps; t.TempDir's parents are private, so use a directory of
	// our own under the system's temporary directory.
	dir, err := os.MkdirTemp("", "mailfleet-smtp-sink-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	full := append([]string{}, args...)
	if os.Geteuid() == 0 {
		full = append(full, "-u", "nobody")
	}
	full = append(full, "-d", dir+"/%M.", "127.0.0.1:"+strconv.Itoa(port), "16")
	cmd := exec.Command(bin, full...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if err == nil {
			c.Close()
			return port, dir
		}
		select {
		case err := <-exited:
			t.Fatalf("smtp-sink exited: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtp-sink did not listen: %v\n%s", err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dumps returns the messages smtp-sink wrote.
func dumps(t *testing.T, dir string) [][]byte {
	t.Helper()
	var out [][]byte
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out = append(out, b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPostfixSmtpSinkAccepts(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"pipelining", nil},
		{"no pipelining", []string{"-p"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, dir := postfixSink(t, tc.args...)
			sh, err := NewSmarthost(SmarthostConfig{Host: "127.0.0.1", Port: port, Hostname: "relay.mailfleet.test"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sh.Close() })
			body, want := bigBody(1 << 20)
			for i := range 3 {
				rs := sh.Deliver(ctxFor(t), message("pf"+strconv.Itoa(i), body, "a@example.org", "b@example.org"))
				if outcomes(rs) != "a@example.org=delivered b@example.org=delivered" || rs[0].Code != 250 {
					t.Fatalf("message %d: %+v", i, rs)
				}
			}
			got := dumps(t, dir)
			if len(got) != 3 {
				t.Fatalf("smtp-sink dumped %d messages, want 3", len(got))
			}
			// smtp-sink writes lines with LF ends, after its own headers
			// and before a final empty line.
			wantLF := bytes.ReplaceAll(want, []byte("\r\n"), []byte("\n"))
			for _, d := range got {
				i := bytes.Index(d, []byte("X-Mailfleet-Label: account=acme; label=1001\n"))
				if i < 0 || !bytes.Contains(d[:i], []byte("X-Rcpt-Args: <b@example.org>")) {
					t.Fatalf("dump lacks the trace headers or the envelope:\n%.600s", d)
				}
				rest := d[i+len("X-Mailfleet-Label: account=acme; label=1001\n"):]
				if !bytes.Equal(bytes.TrimSuffix(rest, []byte("\n")), wantLF) {
					t.Fatalf("body differs after smtp-sink: %d bytes, want %d", len(rest), len(wantLF))
				}
			}
		})
	}
}

func TestPostfixSmtpSinkRejects(t *testing.T) {
	cases := []struct {
		name     string
		args     []string
		outcome  Outcome
		code     int
		enhanced string
		bodySent bool
	}{
		{"soft RCPT", []string{"-r", "RCPT"}, Deferred, 450, "4.3.0", false},
		{"hard RCPT", []string{"-f", "RCPT"}, Failed, 500, "5.3.0", false},
		{"soft MAIL", []string{"-r", "MAIL"}, Deferred, 450, "4.3.0", false},
		{"hard end of data", []string{"-f", "."}, Failed, 500, "5.3.0", true},
		{"soft end of data", []string{"-r", "."}, Deferred, 450, "4.3.0", true},
		{"421 at DATA", []string{"-Q", "DATA"}, Deferred, 421, "4.0.0", false},
		{"disconnect after end of data", []string{"-q", "."}, Deferred, 0, "4.4.2", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			port, dir := postfixSink(t, tc.args...)
			sh, err := NewSmarthost(SmarthostConfig{Host: "127.0.0.1", Port: port, Hostname: "relay.mailfleet.test"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sh.Close() })
			rs := sh.Deliver(ctxFor(t), message("pf", []byte("Subject: x\r\n\r\nhi\r\n"), "a@example.org", "b@example.org"))
			for _, r := range rs {
				if r.Outcome != tc.outcome || r.Code != tc.code || !strings.HasPrefix(r.Enhanced, tc.enhanced) {
					t.Fatalf("%+v, want %v %d %s", r, tc.outcome, tc.code, tc.enhanced)
				}
			}
			// smtp-sink opens a dump per transaction at MAIL; only
			// refusals before DATA must leave the body unsent.
			if tc.bodySent {
				return
			}
			for _, d := range dumps(t, dir) {
				if bytes.Contains(d, []byte("Subject: x")) {
					t.Fatalf("the body was sent although the server refused before DATA:\n%s", d)
				}
			}
		})
	}
}
