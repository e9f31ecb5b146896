package install

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// queueMetrics are the queue and delivery series the dashboard shows; they
// are named here so the dashboard can be checked while the queue is built
// (once registered in Go, they are also found in the sources).
var queueMetrics = []string{
	"mailfleet_queue_depth",
	"mailfleet_queue_oldest_age_seconds",
	"mailfleet_queue_publish_seconds",
	"mailfleet_deliveries_total",
	"mailfleet_delivery_retries_total",
	"mailfleet_delivery_seconds",
}

// TestGrafanaDashboard: the dashboard ConfigMap carries Grafana's sidecar
// label, holds valid dashboard JSON, queries only series mailfleet exports,
// and shows every series the code registers, with the account and label
// variables.
func TestGrafanaDashboard(t *testing.T) {
	objs := splitYAML(t, renderChart(t, "mailfleet-system"))
	var cm *unstructured.Unstructured
	for _, o := range find(t, objs, "ConfigMap", -1) {
		if _, ok := o.GetLabels()["grafana_dashboard"]; ok {
			cm = o
		}
	}
	if cm == nil {
		t.Fatal("no ConfigMap with the grafana_dashboard label: the dashboard is on by default")
	}
	if cm.GetLabels()["grafana_dashboard"] != "1" {
		t.Errorf("grafana_dashboard label %q, want \"1\"", cm.GetLabels()["grafana_dashboard"])
	}
	raw, _, _ := unstructured.NestedString(cm.Object, "data", "mailfleet.json")
	var dash struct {
		UID        string `json:"uid"`
		Title      string `json:"title"`
		Templating struct {
			List []struct {
				Name string `json:"name"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal([]byte(raw), &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Errorf("dashboard uid %q title %q: both are needed for a stable import", dash.UID, dash.Title)
	}
	var vars []string
	for _, v := range dash.Templating.List {
		vars = append(vars, v.Name)
	}
	for _, want := range []string{"datasource", "namespace", "account", "label"} {
		if !slices.Contains(vars, want) {
			t.Errorf("dashboard variables %v lack %s", vars, want)
		}
	}

	registered := registeredMetrics(t)
	known := append(slices.Clone(registered), queueMetrics...)
	metricName := regexp.MustCompile(`mailfleet_[a-z_]+`)
	used := map[string]bool{}
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, target := range p.Targets {
			for _, m := range metricName.FindAllString(target.Expr, -1) {
				m = strings.TrimSuffix(m, "_bucket")
				used[m] = true
				if !slices.Contains(known, m) {
					t.Errorf("panel %q queries %s, which mailfleet does not export", p.Title, m)
				}
			}
		}
	}
	for _, m := range registered {
		if !used[m] {
			t.Errorf("the dashboard does not show %s: add a panel to charts/mailfleet/files/dashboards/mailfleet.json", m)
		}
	}
	for _, m := range queueMetrics {
		if !used[m] {
			t.Errorf("the dashboard does not show %s", m)
		}
	}
}

// registeredMetrics finds the Prometheus series the Go code registers
// (Name: "mailfleet_..." in non-test files).
func registeredMetrics(t *testing.T) []string {
	t.Helper()
	// A metric is declared with its name as Name: in its options, or as
	// the first argument of a package's small constructor (counterVec(...)).
	decl := regexp.MustCompile(`(?:Name:\s+|[a-zA-Z]\(\s*)"(mailfleet_[a-z_]+)"`)
	var names []string
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "bin", "hack", "test", "charts", "docs":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range decl.FindAllStringSubmatch(string(src), -1) {
			if !slices.Contains(names, m[1]) {
				names = append(names, m[1])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 {
		t.Fatal("found no registered mailfleet_ metrics in the sources")
	}
	return names
}
