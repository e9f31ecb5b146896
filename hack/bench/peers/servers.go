package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/certs"
	"github.com/mailfleet/mailfleet/relay/credentials"
)

// server is one SMTP server under test.
type server struct {
	name string
	addr string
	// starttls and auth say what the Go load generator does with it.
	starttls bool
	auth     bool
	user     string
	pass     string
	roots    *x509.CertPool
	caFile   string
	// pids are the roots of the server's process trees, for CPU time.
	pids func() []int
	// sink is where a relaying server delivers; nil for one that keeps
	// nothing.
	sink *sink
	// relayPID is the SMTP server's own process, for RSS.
	relayPID int
	stop     func()
	// pause, when set, stops or resumes the server's processes: Haraka's
	// workers use CPU while idle, which would load the others' runs.
	pause func(bool)
}

// only resumes srv and pauses every other server that can be paused.
func only(servers []*server, srv *server) {
	for _, s := range servers {
		if s.pause != nil {
			s.pause(s != srv)
		}
	}
}

// accepted counts what a server took: the sink downstream counts what it
// delivered.
type sink struct {
	addr      string
	pid       int
	delivered atomic.Int64
	// last is when delivered last grew (Unix nanoseconds).
	last atomic.Int64
}

// startSink runs Postfix's smtp-sink with its running counter (-c) and
// reads the counter from its output: "sess=N quit=N mesg=N\r" per event.
func (l *lab) startSink(name string) (*sink, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &sink{addr: fmt.Sprintf("127.0.0.1:%d", port)}
	args := []string{postfixTool("smtp-sink"), "-c"}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "nobody")
	}
	args = append(args, s.addr, "1024")
	cmd := exec.Command(args[0], args[1:]...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start smtp-sink: %w", err)
	}
	s.pid = cmd.Process.Pid
	go s.count(out)
	l.procs.add(func() { cmd.Process.Kill(); cmd.Wait() })
	return s, waitListening(s.addr, 10*time.Second)
}

func (s *sink) count(r io.Reader) {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\r')
		if i := strings.LastIndex(line, "mesg="); i >= 0 {
			n, err := strconv.ParseInt(strings.TrimRight(line[i+5:], "\r\n "), 10, 64)
			if err == nil && n > s.delivered.Load() {
				s.delivered.Store(n)
				s.last.Store(time.Now().UnixNano())
			}
		}
		if err != nil {
			return
		}
	}
}

// postfixTool finds one of Postfix's test programs (smtp-sink,
// smtp-source) where Debian installs them.
func postfixTool(name string) string {
	for _, dir := range []string{"/usr/sbin", "/usr/lib/postfix/sbin"} {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p
		}
	}
	return name
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// sinkServer is smtp-sink itself as a server under test: the ceiling of
// what a loader and this machine can do over SMTP.
func (l *lab) sinkServer() (*server, error) {
	s, err := l.startSink("smtp-sink")
	if err != nil {
		return nil, err
	}
	return &server{name: "smtp-sink", addr: s.addr, pids: func() []int { return []int{s.pid} }, relayPID: s.pid}, nil
}

// mailfleet runs the relay as a fleet pod does: the rate-limit sidecar
// counting in a real redis-server, the embedded durable queue (synced
// before each 250), AUTH after STARTTLS, delivery to a smtp-sink.
func (l *lab) mailfleet(ctx context.Context) (*server, error) {
	dir := filepath.Join(l.dir, "mailfleet")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := l.buildMailfleet(ctx); err != nil {
		return nil, err
	}
	sk, err := l.startSink("mailfleet-sink")
	if err != nil {
		return nil, err
	}
	redisAddr, redisPID, err := l.redis("redis")
	if err != nil {
		return nil, err
	}
	sidecarAddr, sidecarPID, err := l.sidecar("ratelimit", redisAddr)
	if err != nil {
		return nil, err
	}
	cfgPath, srv, err := l.relayConfig(dir, sk.addr, sidecarAddr)
	if err != nil {
		return nil, err
	}
	relay, stop, err := l.start("relay", l.bin, "relay", "--config", cfgPath)
	if err != nil {
		return nil, err
	}
	if err := waitListening(srv.addr, 30*time.Second); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, l.logTail("relay"))
	}
	srv.sink, srv.relayPID, srv.stop = sk, relay.Process.Pid, stop
	srv.pids = func() []int { return []int{relay.Process.Pid, sidecarPID, redisPID} }
	return srv, nil
}

func (l *lab) buildMailfleet(ctx context.Context) error {
	if l.bin != "" {
		return nil
	}
	bin := filepath.Join(l.dir, "mailfleet-bin")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/mailfleet")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build mailfleet (run from the repository root): %w", err)
	}
	l.bin = bin
	return nil
}

// relayConfig writes the relay's certificate, credentials and
// configuration. Limits are raised where the idle measurement needs them:
// 10,000 sessions from one address.
func (l *lab) relayConfig(dir, sinkAddr, sidecarAddr string) (string, *server, error) {
	files, err := certs.EnsureSelfSigned(filepath.Join(dir, "tls"), []string{"127.0.0.1", "localhost"})
	if err != nil {
		return "", nil, err
	}
	roots, err := certPool(files.CAFile)
	if err != nil {
		return "", nil, err
	}
	key, err := wire.NewKey()
	if err != nil {
		return "", nil, err
	}
	creds := filepath.Join(dir, "credentials.yaml")
	err = credentials.WriteFile(creds, []wire.Account{{APIUser: "bench", KeyDigests: []string{wire.Digest(key)},
		BudgetPerMinute: 100_000_000}})
	if err != nil {
		return "", nil, err
	}
	port, err := freePort()
	if err != nil {
		return "", nil, err
	}
	sinkHost, sinkPort := splitAddr(sinkAddr)
	cfg := fmt.Sprintf(`hostname: relay.bench.test
node: bench
listeners:
- name: smtp
  address: 127.0.0.1:%d
tls: {certFile: %q, keyFile: %q}
credentialsFile: %q
spoolDir: %q
delivery:
  smarthost: {host: %q, port: %d, tls: none}
budget:
  sidecar: {address: %q}
metricsAddress: 127.0.0.1:0
limits: {maxConnections: 20000, maxConnectionsPerClient: -1}
`, port, files.CertFile, files.KeyFile, creds, filepath.Join(dir, "spool"), sinkHost, sinkPort, sidecarAddr)
	path := filepath.Join(dir, "relay.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return "", nil, err
	}
	return path, &server{name: "mailfleet", addr: fmt.Sprintf("127.0.0.1:%d", port),
		starttls: true, auth: true, user: "bench", pass: key, roots: roots, caFile: files.CAFile}, nil
}

func certPool(caFile string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no certificate", caFile)
	}
	return pool, nil
}

// splitAddr splits a host:port this harness made itself.
func splitAddr(addr string) (string, int) {
	host, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	return host, n
}
