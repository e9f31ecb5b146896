package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/internal/syncbuffer"
	"github.com/mailfleet/mailfleet/ratelimit/redistest"
	"github.com/mailfleet/mailfleet/relay/budget"
	"github.com/mailfleet/mailfleet/relay/config"
	"github.com/mailfleet/mailfleet/relay/credentials"
)

// process is a mailfleet subcommand run by a test; it logs JSON to stderr.
type process struct {
	name    string
	cmd     *exec.Cmd
	stderr  *syncbuffer.Buffer
	exited  chan struct{}
	waitErr error
}

func startProcess(t *testing.T, args ...string) *process {
	t.Helper()
	p := &process{name: args[0], cmd: exec.Command(binary, args...), stderr: &syncbuffer.Buffer{}, exited: make(chan struct{})}
	p.cmd.Stderr = p.stderr
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
			t.Logf("mailfleet %s stderr:\n%s", p.name, p.stderr)
		}
	})
	return p
}

// waitLog returns the first log event with message msg whose attributes
// include the given key, value pairs.
func (p *process) waitLog(t *testing.T, msg string, attrs ...string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, line := range strings.Split(p.stderr.String(), "\n") {
			var ev map[string]any
			if json.Unmarshal([]byte(line), &ev) != nil || ev["msg"] != msg {
				continue
			}
			if matches(ev, attrs) {
				return ev
			}
		}
		select {
		case <-p.exited:
			t.Fatalf("mailfleet %s exited before logging %q: %v", p.name, msg, p.waitErr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("mailfleet %s did not log %q", p.name, msg)
		}
	}
}

func matches(ev map[string]any, attrs []string) bool {
	for i := 0; i+1 < len(attrs); i += 2 {
		if ev[attrs[i]] != attrs[i+1] {
			return false
		}
	}
	return true
}

func (p *process) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
		if p.waitErr != nil {
			t.Fatalf("mailfleet %s after SIGTERM: %v", p.name, p.waitErr)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("mailfleet %s did not exit after SIGTERM", p.name)
	}
}

// startRatelimit runs `mailfleet ratelimit` against the Redis at redisAddr
// and returns it with its gRPC and metrics addresses.
func startRatelimit(t *testing.T, redisAddr string, extra ...string) (*process, string, string) {
	t.Helper()
	args := append([]string{"ratelimit", "--listen", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0",
		"--redis-address", redisAddr}, extra...)
	p := startProcess(t, args...)
	ev := p.waitLog(t, "ratelimit started")
	return p, ev["grpc"].(string), ev["metrics"].(string)
}

func TestRatelimitProcess(t *testing.T) {
	r := redistest.StartRedis(t)
	p, grpcAddr, metricsAddr := startRatelimit(t, r.Addr, "--failure-mode", "deny")
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := rlsv3.NewRateLimitServiceClient(conn)
	req := &rlsv3.RateLimitRequest{Domain: "gateway", Descriptors: []*ratelimitv3.RateLimitDescriptor{{
		Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "api_user", Value: "acme"}},
		Limit:   &ratelimitv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 2, Unit: typev3.RateLimitUnit_MINUTE},
	}}}
	redistest.WaitForTimeLeft(time.Minute, 5*time.Second)
	var codes []rlsv3.RateLimitResponse_Code
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := c.ShouldRateLimit(ctx, req)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		codes = append(codes, resp.GetOverallCode())
	}
	want := []rlsv3.RateLimitResponse_Code{rlsv3.RateLimitResponse_OK, rlsv3.RateLimitResponse_OK, rlsv3.RateLimitResponse_OVER_LIMIT}
	if len(codes) != 3 || codes[0] != want[0] || codes[1] != want[1] || codes[2] != want[2] {
		t.Fatalf("answers %v, want %v", codes, want)
	}
	if code, body := httpStatus(t, "http://"+metricsAddr+"/metrics"); code != 200 ||
		!strings.Contains(body, `mailfleet_ratelimit_decisions_total{outcome="over_limit"} 1`) {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}
	p.stop(t)
}

func TestRatelimitRefusesBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no redis", []string{"ratelimit"}, "--redis-address is required"},
		{"failure mode", []string{"ratelimit", "--redis-address", "127.0.0.1:1", "--failure-mode", "maybe"}, `failure mode "maybe"`},
		{"window", []string{"ratelimit", "--redis-address", "127.0.0.1:1", "--window", "1500ms"}, "whole number of seconds"},
		{"half the secrets", []string{"ratelimit", "--redis-address", "127.0.0.1:1", "--credentials-secrets-relay", "mx"}, "--credentials-secrets-namespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := exec.Command(binary, tt.args...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), tt.want) {
				t.Fatalf("%v: %v %q, want it to say %q", tt.args, err, out, tt.want)
			}
		})
	}
}

// TestRelayCountsThroughRatelimitProcess runs what a relay pod runs: the
// relay and the sidecar as processes, configured as the pod would be, with
// Redis beside them. The account's budget is 2 a minute.
func TestRelayCountsThroughRatelimitProcess(t *testing.T) {
	r := redistest.StartRedis(t)
	_, grpcAddr, _ := startRatelimit(t, r.Addr)
	dir := t.TempDir()
	key, err := wire.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	credsFile := filepath.Join(dir, "credentials.yaml")
	err = credentials.WriteFile(credsFile, []wire.Account{{APIUser: "acme", KeyDigests: []string{wire.Digest(key)}, BudgetPerMinute: 2}})
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "relay.yaml")
	// Clients log in over clear text (authRequiresTLS: false): this test is
	// about what follows AUTH, not about TLS.
	cfg := "hostname: mx.test\nlisteners: [{name: smtp, address: '127.0.0.1:0', authRequiresTLS: false}]\ncredentialsFile: " + credsFile +
		"\nspoolDir: " + filepath.Join(dir, "spool") + "\nmetricsAddress: '127.0.0.1:0'\nbudget: {sidecar: {address: '" + grpcAddr + "'}}\n"
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	relay := startProcess(t, "relay", "--config", cfgFile)
	relay.waitLog(t, "budgets are counted by the rate-limit sidecar", "address", grpcAddr, "decisions", "leases")
	smtpAddr := relay.waitLog(t, "listening", "listener", "smtp")["address"].(string)

	c := dialLogin(t, smtpAddr, "acme", key)
	redistest.WaitForTimeLeft(time.Minute, 5*time.Second)
	var got []string
	for range 3 {
		c.expectPrefix("MAIL FROM:<me@example.com>", "250 ")
		c.expectPrefix("RCPT TO:<you@example.com>", "250 ")
		c.expectPrefix("DATA", "354 ")
		c.write("Subject: budget\r\n\r\nhello\r\n")
		got = append(got, c.cmd("."))
	}
	if !strings.HasPrefix(got[0], "250 ") || !strings.HasPrefix(got[1], "250 ") || got[2] != "536 5.7.1 Frequency limited" {
		t.Fatalf("replies %q, want two queued then 536", got)
	}
	c.expectPrefix("QUIT", "221 ")
	relay.stop(t)
}

func TestOpenBudget(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	b, closeBudget, err := openBudget(config.Budget{PodShare: 3}, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	closeBudget()
	share, ok := b.(budget.PodShare)
	if !ok || share.Pods != 3 {
		t.Fatalf("no sidecar configured: %#v, want this pod's share (1/3) of the in-process window", b)
	}
	if _, ok := share.Budget.(*budget.FixedWindow); !ok {
		t.Fatalf("no sidecar configured: counted by %T, want the in-process window", share.Budget)
	}
	b, closeBudget, err = openBudget(config.Budget{Sidecar: &config.BudgetSidecar{Address: "127.0.0.1:8081"}}, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	closeBudget()
	if _, ok := b.(*budget.Leased); !ok {
		t.Fatalf("sidecar configured: %T, want *budget.Leased", b)
	}
	perMessage := false
	b, closeBudget, err = openBudget(config.Budget{Sidecar: &config.BudgetSidecar{Address: "127.0.0.1:8081", Leases: &perMessage}}, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	closeBudget()
	if _, ok := b.(*budget.Sidecar); !ok {
		t.Fatalf("sidecar configured with leases: false: %T, want *budget.Sidecar", b)
	}
	if _, _, err := openBudget(config.Budget{Sidecar: &config.BudgetSidecar{Address: "10.1.2.3:8081"}}, nil, log); err == nil {
		t.Fatal("a sidecar off loopback was accepted")
	}
}
