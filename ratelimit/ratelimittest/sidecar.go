// Package ratelimittest starts in-process rate-limit sidecars on loopback
// for the tests of the packages that call them.
package ratelimittest

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mailfleet/mailfleet/ratelimit"
)

// Sidecar is an in-process rate-limit sidecar: a gRPC server on
// 127.0.0.1:0 with its own Redis client, as each relay pod has its own.
type Sidecar struct {
	// Addr is the gRPC address.
	Addr     string
	Server   *ratelimit.Server
	Registry *prometheus.Registry
	Redis    *redis.Client
}

// quietRedis silences go-redis's process-wide logger once: the failure
// tests make it print a line per failed dial.
var quietRedis sync.Once

// testDeadline is StartSidecar's Redis deadline when the test sets none.
const testDeadline = 5 * time.Second

// StartSidecar serves a ratelimit.Server counting in the Redis at redisAddr.
// When opts.Metrics is nil the sidecar gets its own registry, so a test can
// read one sidecar's metrics; when opts.Log is nil its log is shown if the
// test fails. It is stopped in t.Cleanup.
func StartSidecar(t testing.TB, redisAddr string, opts ratelimit.Options) *Sidecar {
	t.Helper()
	quietRedis.Do(func() {
		ratelimit.LogRedisClientTo(slog.New(slog.DiscardHandler))
	})
	s := &Sidecar{Registry: prometheus.NewRegistry()}
	if opts.Metrics == nil {
		opts.Metrics = ratelimit.NewMetrics(s.Registry)
	}
	if opts.Log == nil {
		var logs bytes.Buffer
		var mu sync.Mutex
		opts.Log = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
		t.Cleanup(func() {
			mu.Lock()
			defer mu.Unlock()
			if t.Failed() && logs.Len() > 0 {
				t.Logf("sidecar %s log:\n%s", s.Addr, logs.String())
			}
		})
	}
	// A test that checks what Redis counted must not see a loaded machine
	// turn a slow Redis reply into the failure policy (make test went red
	// that way with the production 50 ms); a test of failures, or a
	// benchmark of the production path, sets its Deadline.
	if opts.Deadline == 0 {
		opts.Deadline = testDeadline
	}
	deadline := opts.Deadline
	s.Redis = ratelimit.NewRedisClient(ratelimit.RedisOptions{Address: redisAddr, Timeout: ratelimit.SocketTimeout(deadline)})
	t.Cleanup(func() { s.Redis.Close() })
	var err error
	s.Server, err = ratelimit.NewServer(s.Redis, opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = ln.Addr().String()
	g := ratelimit.NewGRPCServer(s.Server)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return s
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Dial opens a gRPC connection to a sidecar, as a relay or a gateway
// would; it is closed in t.Cleanup.
func Dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Metric sums the sidecar's counter name over the series that carry labels
// (name, value pairs; none: every series).
func (s *Sidecar) Metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	families, err := s.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range f.GetMetric() {
			if hasLabels(m.GetLabel(), labels) {
				sum += m.GetCounter().GetValue()
			}
		}
		return sum
	}
	t.Fatalf("no metric %s%v", name, labels)
	return 0
}

func hasLabels(have []*dto.LabelPair, want []string) bool {
	for i := 0; i+1 < len(want); i += 2 {
		found := false
		for _, l := range have {
			found = found || (l.GetName() == want[i] && l.GetValue() == want[i+1])
		}
		if !found {
			return false
		}
	}
	return true
}
