package install

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// rulesFile is the one home of the fleet's alerts: the chart embeds it in
// its PrometheusRule, and Prometheus without the operator loads it as is.
const rulesFile = "charts/mailfleet/files/alerts/mailfleet.rules.yaml"

// TestAlertRules checks the fleet's alerts with Prometheus' own promtool
// (built from the Go module proxy by hack/build-promtool.sh): the rules
// parse, each alert has a unit test that fires it with exact labels and
// annotations (testdata/alerts_test.yaml), every series the rules read is
// one mailfleet exports, and the chart's PrometheusRule holds the file.
func TestAlertRules(t *testing.T) {
	promtool := filepath.Join(repoRoot, "bin", "promtool")
	if out, err := exec.Command(filepath.Join(repoRoot, "hack", "build-promtool.sh")).CombinedOutput(); err != nil {
		t.Fatalf("hack/build-promtool.sh: %v\n%s", err, out)
	}
	rules := filepath.Join(repoRoot, rulesFile)
	if out, err := exec.Command(promtool, "check", "rules", rules).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	cmd := exec.Command(promtool, "test", "rules", "alerts_test.yaml")
	cmd.Dir = filepath.Join(repoRoot, "test", "install", "testdata")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}

	var file struct {
		Groups []struct {
			Rules []struct {
				Alert string `json:"alert"`
				Expr  string `json:"expr"`
			} `json:"rules"`
		} `json:"groups"`
	}
	raw, err := os.ReadFile(rules)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(filepath.Join(repoRoot, "test", "install", "testdata", "alerts_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tested := regexp.MustCompile(`(?m)^\s+alertname: (\S+)$`).FindAllStringSubmatch(string(tests), -1)
	firing := regexp.MustCompile(`(?m)alertname: (\S+)\n\s+exp_alerts:\n\s+- exp_labels`).FindAllStringSubmatch(string(tests), -1)
	exported := registeredMetrics(t)
	metricName := regexp.MustCompile(`mailfleet_[a-z_]+`)
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			if !slices.ContainsFunc(firing, func(m []string) bool { return m[1] == r.Alert }) {
				t.Errorf("alert %s has no test case that fires it in testdata/alerts_test.yaml", r.Alert)
			}
			for _, m := range metricName.FindAllString(r.Expr, -1) {
				if !slices.Contains(exported, m) {
					t.Errorf("alert %s reads %s, which mailfleet does not export", r.Alert, m)
				}
			}
		}
	}
	if len(tested) == 0 {
		t.Fatal("testdata/alerts_test.yaml tests no alert")
	}

	objs := splitYAML(t, renderChart(t, "mailfleet-system", "--set", "prometheusRule.enabled=true"))
	pr := find(t, objs, "PrometheusRule", 1)[0]
	groups, _, _ := unstructured.NestedSlice(pr.Object, "spec", "groups")
	if len(groups) != len(file.Groups) {
		t.Errorf("the chart's PrometheusRule has %d groups, %s has %d", len(groups), rulesFile, len(file.Groups))
	}
}
