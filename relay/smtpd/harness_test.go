package smtpd_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"io"
	"log/slog"
	"maps"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/internal/relaytest"
	"github.com/mailfleet/mailfleet/internal/syncbuffer"
	"github.com/mailfleet/mailfleet/relay/budget"
	"github.com/mailfleet/mailfleet/relay/certs"
	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/queue"
	"github.com/mailfleet/mailfleet/relay/queueid"
	"github.com/mailfleet/mailfleet/relay/smtpd"
	"github.com/mailfleet/mailfleet/relay/submission"
)

// Test accounts. Each test relay gets its own keys; these are the names.
const (
	userMain       = "ifaxin"    // labels 1001 (active) and 1002 (suspended)
	userOther      = "other"     // label 2001
	userRestricted = "sender"    // may only send from ifaxin.com
	userEnvelope   = "envonly"   // ifaxin.com, checked in MAIL FROM only
	userTiny       = "tiny"      // budget 2 per minute
	userSuspended  = "suspended" // suspended account
)

// relayEnv is a relay started on loopback with real credentials, spool,
// budget and certificates, for one test.
type relayEnv struct {
	t     testing.TB
	srv   *smtpd.Server
	spool *queue.Queue
	// drained holds what stored took out of the queue so far.
	drained map[string]storedMessage
	keys    map[string]string
	tlsDir  string
	caPool  *x509.CertPool
	certs   *certs.Reloader
	reg     *prometheus.Registry
	logs    *syncbuffer.Buffer
}

// relaySpec is what a test relay is built from: the engine's
// configuration, the policy's, and the policy's collaborators. startRelay
// fills it with the real ones; options change it.
type relaySpec struct {
	server smtpd.Config
	policy submission.Config
	deps   submission.Deps
	log    *slog.Logger
}

type relayOption func(*relaySpec)

// withBudget counts budgets in b instead of the relay's in-process window.
func withBudget(b budget.Budget) relayOption {
	return func(s *relaySpec) { s.deps.Budget = b }
}

// startRelay is the one builder of a relay for the tests (and the
// benchmark): relay/submission's Backend behind the engine, with the test
// accounts, a self-signed certificate, the embedded JetStream queue and
// three listeners.
func startRelay(t testing.TB, opts ...relayOption) *relayEnv {
	t.Helper()
	dir := t.TempDir()
	env := &relayEnv{t: t, keys: map[string]string{}, tlsDir: filepath.Join(dir, "tls"), logs: &syncbuffer.Buffer{},
		drained: map[string]storedMessage{}, reg: prometheus.NewRegistry()}
	log := slog.New(slog.NewJSONHandler(env.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	spec := env.defaultSpec(dir, log)
	for _, o := range opts {
		o(&spec)
	}
	backend, err := submission.New(spec.policy, spec.deps)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.assertNoKeyLeaked) // after the server's shutdown: cleanups run last-registered first
	env.srv = startServer(t, spec.server, backend, spec.log, env.reg)
	return env
}

// defaultSpec opens the relay's real collaborators under dir.
func (e *relayEnv) defaultSpec(dir string, log *slog.Logger) relaySpec {
	e.t.Helper()
	src, err := credentials.OpenFile(e.writeCredentials(filepath.Join(dir, "credentials.yaml")), log)
	if err != nil {
		e.t.Fatal(err)
	}
	tlsConfig := e.startCerts(log)
	e.openQueue(filepath.Join(dir, "queue"), log)
	ids, _ := queueid.New("test-node")
	return relaySpec{
		server: smtpd.Config{
			Hostname: "mx.test",
			Banner:   "mailfleet",
			TLS:      tlsConfig,
			Listeners: []smtpd.Listener{
				// Most tests speak clear text on "smtp" to see the protocol
				// itself, so it opts out of the default; "submission" keeps it.
				{Name: "smtp", Addr: "127.0.0.1:0", AllowAuthWithoutTLS: true},
				{Name: "submission", Addr: "127.0.0.1:0"},
				{Name: "smtps", Addr: "127.0.0.1:0", ImplicitTLS: true},
			},
		},
		deps: submission.Deps{
			Auth:    credentials.NewVerifier(src),
			Budget:  budget.NewFixedWindow(),
			Spool:   e.spool,
			IDs:     ids,
			Metrics: submission.NewMetrics(e.reg),
		},
		log: log,
	}
}

// startCerts serves a self-signed certificate under tlsDir through a
// reloader, as cert-manager's files are.
func (e *relayEnv) startCerts(log *slog.Logger) *tls.Config {
	c := relaytest.StartCerts(e.t, e.tlsDir, log)
	e.caPool, e.certs = c.Pool, c.Reloader
	return c.TLS
}

// openQueue opens the relay's real queue: the embedded JetStream, synced
// before each acknowledgement. It is closed after the server's shutdown
// (cleanups run last-registered first). AckWait is short so that a message
// stranded by one of stored()'s short takes comes back in time; nothing
// here takes long to deliver.
func (e *relayEnv) openQueue(dir string, log *slog.Logger) {
	e.t.Helper()
	var err error
	e.spool, err = queue.Open(context.Background(), queue.Options{Dir: dir, Log: log, AckWait: 3 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { e.spool.Close() })
}

// startServer starts the engine with backend on cfg's listeners, and shuts
// it down when the test ends.
func startServer(t testing.TB, cfg smtpd.Config, backend smtpd.Backend, log *slog.Logger, reg prometheus.Registerer) *smtpd.Server {
	t.Helper()
	srv, err := smtpd.New(cfg, smtpd.Deps{Backend: backend, Metrics: smtpd.NewMetrics(reg), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return srv
}

func (e *relayEnv) writeCredentials(path string) string {
	e.t.Helper()
	e.keys = relaytest.WriteAccounts(e.t, path, []credentials.Account{
		{APIUser: userMain, Labels: []credentials.Label{{ID: "1001"}, {ID: "1002", Suspended: true}}},
		{APIUser: userOther, Labels: []credentials.Label{{ID: "2001"}}},
		{APIUser: userRestricted, AllowedSenderDomains: []string{"ifaxin.com"}},
		{APIUser: userEnvelope, AllowedSenderDomains: []string{"ifaxin.com"}, SenderPolicy: wire.SenderPolicyEnvelope},
		{APIUser: userTiny, BudgetPerMinute: 2},
		{APIUser: userSuspended, Suspended: true},
	})
	return path
}

// assertNoKeyLeaked checks the logs and the metrics for any key.
func (e *relayEnv) assertNoKeyLeaked() {
	relaytest.AssertNoKeyLeaked(e.t, e.reg, e.logs.String(), e.keys)
}

// metric is the value of the counter name with exactly labels in the
// relay's registry; 0 when there is none yet.
func (e *relayEnv) metric(name string, labels map[string]string) float64 {
	e.t.Helper()
	families, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if labelsEqual(m.GetLabel(), labels) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func labelsEqual(pairs []*dto.LabelPair, want map[string]string) bool {
	if len(pairs) != len(want) {
		return false
	}
	for _, p := range pairs {
		if v, ok := want[p.GetName()]; !ok || v != p.GetValue() {
			return false
		}
	}
	return true
}

func (e *relayEnv) addr(listener string) string {
	return e.srv.Addr(listener).String()
}

func (e *relayEnv) clientTLS() *tls.Config {
	return &tls.Config{RootCAs: e.caPool, ServerName: "localhost"}
}

// stored returns every message the relay queued so far: envelope and body
// by id. It takes them out of the queue (and keeps them for later calls).
func (e *relayEnv) stored() map[string]storedMessage {
	e.t.Helper()
	relaytest.Drain(e.t, e.spool, e.drained)
	return maps.Clone(e.drained)
}

type storedMessage = relaytest.Stored

// rawClient speaks SMTP line by line, so tests see every reply exactly.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return newRawClient(t, conn)
}

func dialRawTLS(t *testing.T, addr string, cfg *tls.Config) *rawClient {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return newRawClient(t, conn)
}

func newRawClient(t *testing.T, conn net.Conn) *rawClient {
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
}

// write sends raw bytes, as they are.
func (c *rawClient) write(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write %q: %v", s, err)
	}
}

// cmd sends a command line and returns the reply.
func (c *rawClient) cmd(line string) string {
	c.t.Helper()
	c.write(line + "\r\n")
	return c.reply()
}

// reply reads one reply; the lines of a multi-line reply are joined with "\n".
func (c *rawClient) reply() string {
	c.t.Helper()
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("read reply (after %q): %v", lines, err)
		}
		line = strings.TrimSuffix(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			return strings.Join(lines, "\n")
		}
	}
}

// expect sends a command and fails unless the reply is exactly want.
func (c *rawClient) expect(line, want string) {
	c.t.Helper()
	if got := c.cmd(line); got != want {
		c.t.Fatalf("%s: got %q, want %q", line, got, want)
	}
}

// expectPrefix sends a command and fails unless the reply starts with want.
func (c *rawClient) expectPrefix(line, want string) string {
	c.t.Helper()
	got := c.cmd(line)
	if !strings.HasPrefix(got, want) {
		c.t.Fatalf("%s: got %q, want a reply starting %q", line, got, want)
	}
	return got
}

// login greets and authenticates with AUTH PLAIN.
func (c *rawClient) login(user, key string) {
	c.t.Helper()
	c.reply() // greeting
	c.cmd("EHLO client.test")
	c.expect("AUTH PLAIN "+b64("\x00"+user+"\x00"+key), "235 2.7.0 Authentication successful")
}

// send runs one transaction and returns the reply to the end of data.
func (c *rawClient) send(from, to, body string) string {
	c.t.Helper()
	c.expectPrefix("MAIL FROM:<"+from+">", "250 ")
	c.expectPrefix("RCPT TO:<"+to+">", "250 ")
	c.expect("DATA", "354 go ahead")
	c.write(body)
	return c.cmd(".")
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
