package httpapi_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/internal/relaytest"
	"github.com/mailfleet/mailfleet/internal/syncbuffer"
	"github.com/mailfleet/mailfleet/relay/budget"
	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/httpapi"
	"github.com/mailfleet/mailfleet/relay/queue"
	"github.com/mailfleet/mailfleet/relay/queueid"
	"github.com/mailfleet/mailfleet/relay/smtpd"
	"github.com/mailfleet/mailfleet/relay/spool"
	"github.com/mailfleet/mailfleet/relay/submission"
)

// Test accounts; each relay gets its own keys.
const (
	userMain  = "acme"  // label 1001 (active), 1002 (suspended); any sender
	userCorp  = "corp"  // sender and From in corp.example only
	userTiny  = "tiny"  // budget 5 per window
	userFew   = "few"   // 3 recipients per message
	userBench = "bench" // a budget no benchmark spends
	tinyLimit = 5
)

// relay is one relay process's parts, started for one test: the real
// verifier, throttle, policy, embedded JetStream queue and certificate,
// with the HTTP API and the SMTP engine in front of the same policy.
type relay struct {
	t      testing.TB
	api    *httpapi.Server
	smtp   *smtpd.Server
	queue  *queue.Queue
	keys   map[string]string
	caFile string
	caPool *x509.CertPool
	reg    *prometheus.Registry
	logs   *syncbuffer.Buffer
}

type relayConfig struct {
	budget budget.Budget
	// spool replaces the queue as where the policy spools, when set.
	spool spool.Spool
	api   httpapi.Options
	// wrap, when set, stands between the API and the real policy.
	wrap func(httpapi.Policy) httpapi.Policy
	// suppressions, when set, is the policy's suppression list.
	suppressions submission.Suppressions
}

type option func(*relayConfig)

func withBudget(b budget.Budget) option { return func(c *relayConfig) { c.budget = b } }

func withSpool(s spool.Spool) option { return func(c *relayConfig) { c.spool = s } }

func withAPI(f func(*httpapi.Options)) option { return func(c *relayConfig) { f(&c.api) } }

func withPolicy(wrap func(httpapi.Policy) httpapi.Policy) option {
	return func(c *relayConfig) { c.wrap = wrap }
}

func startRelay(t testing.TB, opts ...option) *relay {
	t.Helper()
	dir := t.TempDir()
	r := &relay{t: t, keys: map[string]string{}, reg: prometheus.NewRegistry(), logs: &syncbuffer.Buffer{}}
	log := slog.New(slog.NewJSONHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := relayConfig{budget: budget.NewFixedWindow()}
	for _, o := range opts {
		o(&cfg)
	}
	tlsConfig := r.startCerts(filepath.Join(dir, "tls"), log)
	policy := r.newPolicy(dir, cfg, log)
	t.Cleanup(r.assertNoKeyLeaked) // runs after the servers' shutdown
	r.startSMTP(tlsConfig, policy, log)
	o := cfg.api
	o.Addr, o.TLS, o.Policy, o.Hostname, o.Log = "127.0.0.1:0", tlsConfig, policy, "relay.test", log
	if cfg.wrap != nil {
		o.Policy = cfg.wrap(o.Policy)
	}
	o.Metrics = httpapi.NewMetrics(r.reg)
	var err error
	if r.api, err = httpapi.New(o); err != nil {
		t.Fatal(err)
	}
	if err := r.api.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.api.Shutdown(ctx); err != nil {
			t.Errorf("api shutdown: %v", err)
		}
	})
	return r
}

func (r *relay) startCerts(dir string, log *slog.Logger) *tls.Config {
	c := relaytest.StartCerts(r.t, dir, log)
	r.caFile, r.caPool = c.CAFile, c.Pool
	return c.TLS
}

// newPolicy is relay/submission's Backend on the test accounts and a real
// queue, the one policy both doors share.
func (r *relay) newPolicy(dir string, cfg relayConfig, log *slog.Logger) *submission.Backend {
	t := r.t
	src, err := credentials.OpenFile(r.writeAccounts(filepath.Join(dir, "credentials.yaml")), log)
	if err != nil {
		t.Fatal(err)
	}
	r.queue, err = queue.Open(context.Background(), queue.Options{Dir: filepath.Join(dir, "queue"), Log: log, AckWait: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.queue.Close() })
	ids, err := queueid.New("test-node")
	if err != nil {
		t.Fatal(err)
	}
	var sp spool.Spool = r.queue
	if cfg.spool != nil {
		sp = cfg.spool
	}
	policy, err := submission.New(submission.Config{AuthFailureLimit: 5}, submission.Deps{
		Auth: credentials.NewVerifier(src), Budget: cfg.budget, Spool: sp, IDs: ids, Metrics: submission.NewMetrics(r.reg),
		Suppressions: cfg.suppressions,
	})
	if err != nil {
		t.Fatal(err)
	}
	return policy
}

func (r *relay) startSMTP(tlsConfig *tls.Config, policy smtpd.Backend, log *slog.Logger) {
	srv, err := smtpd.New(smtpd.Config{
		Hostname: "relay.test", TLS: tlsConfig, MaxMessageBytes: 16_000_000,
		Listeners: []smtpd.Listener{{Name: "submission", Addr: "127.0.0.1:0"}},
	}, smtpd.Deps{Backend: policy, Metrics: smtpd.NewMetrics(r.reg), Log: log})
	if err != nil {
		r.t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.smtp = srv
	r.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
}

func (r *relay) writeAccounts(path string) string {
	r.keys = relaytest.WriteAccounts(r.t, path, []credentials.Account{
		{APIUser: userMain, Labels: []credentials.Label{{ID: "1001"}, {ID: "1002", Suspended: true}}},
		{APIUser: userCorp, AllowedSenderDomains: []string{"corp.example"}},
		{APIUser: userTiny, BudgetPerMinute: tinyLimit},
		{APIUser: userFew, MaxRecipients: 3},
		{APIUser: userBench, BudgetPerMinute: 1 << 30},
	})
	return path
}

func (r *relay) assertNoKeyLeaked() {
	relaytest.AssertNoKeyLeaked(r.t, r.reg, r.logs.String(), r.keys)
}

func (r *relay) url(path string) string { return "https://" + r.api.Addr().String() + path }

// client is a Go net/http client that trusts the relay's certificate.
func (r *relay) client() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: r.caPool, ServerName: "localhost"},
	}}
}

// answer is a response read whole.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// errorCode is the code of an error answer, failing on another shape.
func (a answer) errorCode(t testing.TB) string {
	t.Helper()
	var e struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal(a.body, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		t.Fatalf("status %d: body %q is not the error shape", a.status, a.body)
	}
	return e.Error.Code
}

func (a answer) messageID(t testing.TB) string {
	t.Helper()
	var ok httpapi.SendResponse
	if err := json.Unmarshal(a.body, &ok); a.status != http.StatusOK || err != nil || !ok.Queued || ok.MessageID == "" {
		t.Fatalf("want 200 queued, got %d %s", a.status, a.body)
	}
	return ok.MessageID
}

// post sends body with contentType as user (no credentials when user is "").
func (r *relay) post(user, contentType string, body []byte) answer {
	r.t.Helper()
	req, err := http.NewRequest(http.MethodPost, r.url("/v1/mail/send"), bytes.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if user != "" {
		apiUser, _, _ := wire.SplitUsername(user)
		req.SetBasicAuth(user, r.keys[apiUser])
	}
	return r.do(req)
}

func (r *relay) do(req *http.Request) answer {
	r.t.Helper()
	resp, err := r.client().Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

func (r *relay) postJSON(user string, v any) answer {
	r.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		r.t.Fatal(err)
	}
	return r.post(user, "application/json", b)
}

// stored takes every queued message out of the queue, by id.
func (r *relay) stored() map[string]relaytest.Stored {
	r.t.Helper()
	out := map[string]relaytest.Stored{}
	relaytest.Drain(r.t, r.queue, out)
	return out
}
