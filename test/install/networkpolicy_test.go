package install

import (
	"maps"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mailfleet/mailfleet/controllers/render"
)

// TestEngineNetworkPolicies: the basic NATS and Redis admit relay pods, as
// the operator renders them (config/samples' relay, in a namespace of its
// own), to NATS' client port and to Redis; the NATS nodes to each other's
// route port; and nobody else to anything: not the operator, not another
// pod of the release, not a NATS node of another namespace, not a relay to
// the route or monitor port. No CNI runs under envtest, so the policies are
// evaluated here with NetworkPolicy's rules (a pod a policy selects takes
// only what an ingress rule's peers and ports allow; a peer with a
// namespaceSelector matches pods of the namespaces it selects, one without
// matches pods of the policy's namespace) after the API server has accepted
// them (TestHelmTemplate's dry run).
func TestEngineNetworkPolicies(t *testing.T) {
	const ns = "mailfleet-system"
	relayNS := map[string]string{"kubernetes.io/metadata.name": "mail"}
	objs := splitYAML(t, renderChart(t, ns, "--set", "nats.enabled=true", "--set", "redis.enabled=true"))
	var policies []networkingv1.NetworkPolicy
	for _, o := range find(t, objs, "NetworkPolicy", 2) {
		var p networkingv1.NetworkPolicy
		fromUnstructured(t, o, &p)
		if !slices.Equal(p.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
			t.Errorf("NetworkPolicy %s policyTypes %v, want [Ingress]", p.Name, p.Spec.PolicyTypes)
		}
		policies = append(policies, p)
	}
	pods := map[string]*corev1.Pod{}
	for _, p := range podsOf(t, objs, ns) {
		pods[p.Name] = p
	}
	nats, redis, operator := pods["mailfleet-nats"], pods["mailfleet-redis"], pods["mailfleet-operator"]
	if nats == nil || redis == nil || operator == nil {
		t.Fatalf("pods rendered: %v", slices.Sorted(maps.Keys(pods)))
	}
	relay := sampleRelay(t, "mail")
	rendered, err := render.Relay(relay, render.Options{Image: "mailfleet:test"})
	if err != nil {
		t.Fatal(err)
	}
	relayLabels := rendered.Deployment.Spec.Template.Labels
	// A pod of the release that is not a relay (the dashboard's, a debug
	// pod someone starts next to NATS).
	stranger := map[string]string{"app.kubernetes.io/name": "mailfleet", "app.kubernetes.io/instance": "mailfleet"}
	releaseNS := map[string]string{"kubernetes.io/metadata.name": ns}
	otherNS := map[string]string{"kubernetes.io/metadata.name": "elsewhere"}

	type source struct {
		name     string
		labels   map[string]string
		nsLabels map[string]string
	}
	var (
		fromRelay      = source{"a relay pod", relayLabels, relayNS}
		fromOperator   = source{"the operator", operator.Labels, releaseNS}
		fromStranger   = source{"another pod of the release", stranger, releaseNS}
		fromNATS       = source{"a NATS node", nats.Labels, releaseNS}
		fromForeignNAT = source{"a NATS node of another namespace", nats.Labels, otherNS}
	)
	cases := []struct {
		to      *corev1.Pod
		port    string
		from    source
		allowed bool
	}{
		{nats, "client", fromRelay, true},
		{nats, "client", fromOperator, false},
		{nats, "client", fromStranger, false},
		{nats, "cluster", fromNATS, true},
		{nats, "cluster", fromForeignNAT, false},
		{nats, "cluster", fromRelay, false},
		{nats, "monitor", fromRelay, false},
		{nats, "monitor", fromStranger, false},
		{redis, "redis", fromRelay, true},
		{redis, "redis", fromOperator, false},
		{redis, "redis", fromStranger, false},
		{redis, "redis", fromNATS, false},
	}
	for _, tc := range cases {
		port := containerPort(t, tc.to, tc.port)
		got := admitted(t, policies, ns, tc.to, port, tc.from.labels, tc.from.nsLabels)
		if got != tc.allowed {
			t.Errorf("%s to %s port %s (%d): admitted = %v, want %v", tc.from.name, tc.to.Name, tc.port, port.ContainerPort, got, tc.allowed)
		}
	}

	// relayNamespaceSelector narrows where relays may connect from.
	narrowed := splitYAML(t, renderChart(t, ns, "--set", "nats.enabled=true", "--set", "redis.enabled=true",
		"--set", "networkPolicy.relayNamespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=mail"))
	var narrow []networkingv1.NetworkPolicy
	for _, o := range find(t, narrowed, "NetworkPolicy", 2) {
		var p networkingv1.NetworkPolicy
		fromUnstructured(t, o, &p)
		narrow = append(narrow, p)
	}
	if !admitted(t, narrow, ns, redis, containerPort(t, redis, "redis"), relayLabels, relayNS) {
		t.Error("with relayNamespaceSelector naming the relay's namespace, the relay is refused")
	}
	if admitted(t, narrow, ns, redis, containerPort(t, redis, "redis"), relayLabels, otherNS) {
		t.Error("with relayNamespaceSelector naming another namespace, a relay-labelled pod is admitted")
	}

	// Nothing without the engines, or with networkPolicy.enabled=false.
	find(t, splitYAML(t, renderChart(t, ns)), "NetworkPolicy", 0)
	find(t, splitYAML(t, renderChart(t, ns, "--set", "nats.enabled=true", "--set", "redis.enabled=true", "--set", "networkPolicy.enabled=false")), "NetworkPolicy", 0)
}

// containerPort is the pod's named port.
func containerPort(t *testing.T, pod *corev1.Pod, name string) corev1.ContainerPort {
	t.Helper()
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == name {
				return p
			}
		}
	}
	t.Fatalf("pod %s has no port %s", pod.Name, name)
	return corev1.ContainerPort{}
}

// admitted says whether the policies let a pod with srcLabels, in a
// namespace labelled srcNS, open a TCP connection to port of dst in
// namespace ns. A pod no policy selects takes anything; one that some
// policy selects takes what one of their ingress rules allows.
func admitted(t *testing.T, policies []networkingv1.NetworkPolicy, ns string, dst *corev1.Pod, port corev1.ContainerPort, srcLabels, srcNS map[string]string) bool {
	t.Helper()
	selected := false
	for _, p := range policies {
		if p.Namespace != ns || !matches(t, &p.Spec.PodSelector, dst.Labels) {
			continue
		}
		selected = true
		for _, rule := range p.Spec.Ingress {
			if portAllowed(rule.Ports, port) && peerAllowed(t, rule.From, srcLabels, srcNS, ns) {
				return true
			}
		}
	}
	return !selected
}

func portAllowed(ports []networkingv1.NetworkPolicyPort, port corev1.ContainerPort) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
			continue
		}
		if p.Port == nil ||
			(p.Port.Type == intstr.String && p.Port.StrVal == port.Name) ||
			(p.Port.Type == intstr.Int && p.Port.IntVal == port.ContainerPort) {
			return true
		}
	}
	return false
}

func peerAllowed(t *testing.T, peers []networkingv1.NetworkPolicyPeer, srcLabels, srcNS map[string]string, policyNS string) bool {
	if len(peers) == 0 {
		return true
	}
	for _, peer := range peers {
		if peer.IPBlock != nil {
			t.Errorf("a peer by IP block (%v) admits whatever holds those addresses", peer.IPBlock)
			continue
		}
		nsOK := srcNS["kubernetes.io/metadata.name"] == policyNS
		if peer.NamespaceSelector != nil {
			nsOK = matches(t, peer.NamespaceSelector, srcNS)
		}
		podOK := peer.PodSelector == nil || matches(t, peer.PodSelector, srcLabels)
		if nsOK && podOK {
			return true
		}
	}
	return false
}

func matches(t *testing.T, sel *metav1.LabelSelector, l map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatal(err)
	}
	return s.Matches(labels.Set(l))
}
