package install

import (
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/mailfleet/mailfleet/controllers/render"
)

// TestRelayPodMonitorMatchesRelayPods: the chart's PodMonitor selects the
// pods the operator renders for the sample relay (which sets rateLimit, so
// its pods have the sidecar), and every port it scrapes is a named port of
// those pods.
func TestRelayPodMonitorMatchesRelayPods(t *testing.T) {
	relay := sampleRelay(t, "mail")
	objs, err := render.Relay(relay, render.Options{Image: "mailfleet:test"})
	if err != nil {
		t.Fatal(err)
	}
	pod := objs.Deployment.Spec.Template
	var ports []string
	for _, c := range slices.Concat(pod.Spec.InitContainers, pod.Spec.Containers) {
		for _, p := range c.Ports {
			ports = append(ports, p.Name)
		}
	}

	pm := find(t, splitYAML(t, renderChart(t, "mailfleet-system", "--set", "relayPodMonitor.enabled=true")), "PodMonitor", 1)[0]
	selector, _, _ := unstructured.NestedStringMap(pm.Object, "spec", "selector", "matchLabels")
	if len(selector) == 0 {
		t.Fatal("the PodMonitor selects no labels")
	}
	for k, v := range selector {
		if pod.Labels[k] != v {
			t.Errorf("the PodMonitor selects %s=%s; relay pods are labelled %v", k, v, pod.Labels)
		}
	}
	endpoints, _, _ := unstructured.NestedSlice(pm.Object, "spec", "podMetricsEndpoints")
	var scraped []string
	for _, e := range endpoints {
		port, _ := e.(map[string]any)["port"].(string)
		scraped = append(scraped, port)
		if !slices.Contains(ports, port) {
			t.Errorf("the PodMonitor scrapes port %q; relay pods name %v", port, ports)
		}
	}
	for _, want := range []string{"metrics", "rl-metrics"} {
		if !slices.Contains(scraped, want) && slices.Contains(ports, want) {
			t.Errorf("relay pods serve metrics on %q, which the PodMonitor does not scrape", want)
		}
	}
	if relay.Spec.RateLimit == nil {
		t.Error("the sample relay sets no rateLimit: the sidecar's port is not checked")
	}
}
