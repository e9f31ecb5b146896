package install

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestNATSConfig parses the basic JetStream's rendered nats.conf with
// nats-server's own parser (the module the relay's embedded queue uses), as
// node mailfleet-nats-1 reads it: JetStream on, every write fsynced before
// its acknowledgement (sync_interval: always, DESIGN.md §5), the node named
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
