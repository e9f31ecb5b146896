package install

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/mailfleet/mailfleet/internal/natstest"
)

// TestNATSConfig parses the basic JetStream's rendered nats.conf with
// nats-server's own parser (the module the relay's embedded queue uses), as
// node mailfleet-nats-1 reads it: JetStream on, every write fsynced before
// its acknowledgement (sync_interval: always), the node named
// after its pod, and routes to all three nodes.
func TestNATSConfig(t *testing.T) {
	objs := splitYAML(t, renderChart(t, "mailfleet-system", "--set", "nats.enabled=true"))
	var conf string
	for _, cm := range find(t, objs, "ConfigMap", -1) {
		if s, ok, _ := unstructured.NestedString(cm.Object, "data", "nats.conf"); ok {
			conf = s
		}
	}
	if conf == "" {
		t.Fatal("no ConfigMap with nats.conf rendered")
	}
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("POD_NAME", "mailfleet-nats-1") // the StatefulSet's downward API
	opts, err := natsserver.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server refuses the config: %v\n%s", err, conf)
	}
	if !opts.JetStream || opts.StoreDir != "/data" {
		t.Errorf("JetStream %v, store_dir %q; want JetStream on the /data volume", opts.JetStream, opts.StoreDir)
	}
	if !opts.SyncAlways {
		t.Errorf("sync_interval is not always (SyncInterval %v): JetStream would acknowledge writes it has not fsynced", opts.SyncInterval)
	}
	if opts.ServerName != "mailfleet-nats-1" {
		t.Errorf("server_name %q, want the pod's name", opts.ServerName)
	}
	if opts.Cluster.Name != "mailfleet-nats" || opts.Cluster.Port != 6222 {
		t.Errorf("cluster %q on port %d, want mailfleet-nats on 6222", opts.Cluster.Name, opts.Cluster.Port)
	}
	var routes []string
	for _, r := range opts.Routes {
		routes = append(routes, r.Host)
	}
	for i := range 3 {
		want := fmt.Sprintf("mailfleet-nats-%d.mailfleet-nats-headless.mailfleet-system.svc:6222", i)
		if !strings.Contains(strings.Join(routes, " "), want) {
			t.Errorf("routes %v lack %s", routes, want)
		}
	}
	if opts.PidFile != "/tmp/nats.pid" {
		t.Errorf("pid_file %q: the preStop hook signals lame duck mode through /tmp/nats.pid", opts.PidFile)
	}
}

// TestNATSReadinessWaitsForJetStream: the basic NATS' readiness probe must
// fail while the node has no JetStream meta leader, when every stream
// operation answers 503 and a relay could not start. A node of a 3-node
// cluster whose peers are not up yet is exactly that; the probe path is the
// one the chart renders, asked of a real nats-server.
func TestNATSReadinessWaitsForJetStream(t *testing.T) {
	objs := splitYAML(t, renderChart(t, "mailfleet-system", "--set", "nats.enabled=true"))
	sts := find(t, objs, "StatefulSet", 1)[0]
	containers, _, _ := unstructured.NestedSlice(sts.Object, "spec", "template", "spec", "containers")
	path, _, _ := unstructured.NestedString(containers[0].(map[string]any), "readinessProbe", "httpGet", "path")
	if path == "" {
		t.Fatal("the NATS container has no HTTP readiness probe")
	}

	// Two routes to ports where nobody listens: no quorum, no meta leader.
	var routes []*url.URL
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		routes = append(routes, &url.URL{Scheme: "nats", Host: ln.Addr().String()})
		ln.Close()
	}
	srv := natstest.Run(t, &natsserver.Options{
		ServerName: "mailfleet-nats-0", Host: "127.0.0.1", Port: -1, HTTPHost: "127.0.0.1", HTTPPort: -1,
		JetStream: true, StoreDir: t.TempDir(), Routes: routes, NoSigs: true, NoLog: true,
		Cluster: natsserver.ClusterOpts{Name: "mailfleet-nats", Host: "127.0.0.1", Port: -1},
	}, 10*time.Second)
	monitor := "http://" + srv.MonitorAddr().String()
	// The server itself is up: a liveness-style check passes ...
	if code := httpGet(t, monitor+"/healthz?js-enabled-only=true"); code != http.StatusOK {
		t.Fatalf("js-enabled-only = %d, want 200 from a running server", code)
	}
	// ... but it is not ready to hold a queue.
	if code := httpGet(t, monitor+path); code == http.StatusOK {
		t.Fatalf("readiness probe %s = 200 on a node without a JetStream meta leader", path)
	}
}

func httpGet(t *testing.T, u string) int {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
