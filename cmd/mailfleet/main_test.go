package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/internal/syncbuffer"
)

// binary is the mailfleet binary under test, built once by TestMain, so the
// tests run the very program a user runs and can signal it.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mailfleet-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "mailfleet")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		os.RemoveAll(dir)
		panic("build mailfleet: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// devProcess is a running `mailfleet dev`.
type devProcess struct {
	cmd     *exec.Cmd
	dataDir string
	env     map[string]string // credentials.env
	metrics string            // host:port
	stdout  *syncbuffer.Buffer
	stderr  *syncbuffer.Buffer
	exited  chan struct{} // closed when the process has exited
	waitErr error         // its exit status, once exited is closed
}

func startDev(t *testing.T) *devProcess {
	t.Helper()
	return startDevIn(t, t.TempDir())
}

func startDevIn(t *testing.T, dataDir string, flags ...string) *devProcess {
	t.Helper()
	p := &devProcess{dataDir: dataDir, stdout: &syncbuffer.Buffer{}, stderr: &syncbuffer.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(binary, append([]string{"dev", "--data-dir", p.dataDir,
		"--smtp-port", "0", "--smtps-port", "0", "--api-port", "0", "--metrics-address", "127.0.0.1:0"}, flags...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("mailfleet dev stdout:\n%s\nstderr:\n%s", p.stdout, p.stderr)
		}
	})
	metricsLine := regexp.MustCompile(`metrics +http://([0-9.:]+)/metrics`)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m := metricsLine.FindStringSubmatch(p.stdout.String()); m != nil {
			p.metrics = m[1]
			break
		}
		select {
		case <-p.exited:
			t.Fatalf("mailfleet dev exited: %v\n%s", p.waitErr, p.stderr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("mailfleet dev did not start:\n%s", p.stderr)
		}
	}
	p.env = readEnvFile(t, filepath.Join(p.dataDir, "credentials.env"))
	return p
}

func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	for _, k := range []string{"MAILFLEET_API_USER", "MAILFLEET_API_KEY", "MAILFLEET_LABEL_ID", "MAILFLEET_SMTP_PORT", "MAILFLEET_SMTPS_PORT", "MAILFLEET_API_PORT", "MAILFLEET_CA_FILE"} {
		if env[k] == "" {
			t.Fatalf("credentials.env lacks %s", k)
		}
	}
	return env
}

func (p *devProcess) addr(portVar string) string {
	return net.JoinHostPort("127.0.0.1", p.env[portVar])
}

// waitForMail waits for n .eml files in the dev mail directory.
func (p *devProcess) waitForMail(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		files, _ := filepath.Glob(filepath.Join(p.dataDir, "mail", "*.eml"))
		if len(files) >= n {
			return files
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages delivered", len(files), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *devProcess) tlsConfig(t *testing.T) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(p.env["MAILFLEET_CA_FILE"])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &tls.Config{RootCAs: pool, ServerName: "localhost"}
}

func httpStatus(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}
