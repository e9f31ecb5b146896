package install

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// restricted is the label that makes a namespace enforce the "restricted"
// Pod Security Standard, as the docs tell users to label the operator's.
var restricted = map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}

// TestHelmLint runs `helm lint --strict` with the defaults and with every
// optional part on.
func TestHelmLint(t *testing.T) {
	for name, args := range map[string][]string{"defaults": nil, "everything on": allOptional} {
		t.Run(name, func(t *testing.T) {
			out, err := helm(append([]string{"lint", "--strict", chartDir}, args...)...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if !strings.Contains(string(out), "0 chart(s) failed") {
				t.Fatalf("helm lint:\n%s", out)
			}
		})
	}
}

// TestHelmTemplate renders the chart with the defaults and with every
// optional part on, checks what the API server cannot (what is rendered,
// and the wiring between values and objects), then has the API server judge
// the result: a server-side dry-run apply of every object, and a dry-run of
// each pod in a namespace that enforces PodSecurity "restricted".
func TestHelmTemplate(t *testing.T) {
	cases := []struct {
		name  string
		args  []string
		kinds map[string]int // kind -> how many
	}{{
		name: "defaults",
		kinds: map[string]int{
			// ClusterRoles: the operator's, its metrics reviews, metrics
			// reader, the tenants' edit and view.
			"CustomResourceDefinition": 5, "ServiceAccount": 1, "ClusterRole": 5, "ClusterRoleBinding": 2,
			"Role": 1, "RoleBinding": 1, "Deployment": 1, "Service": 1, "ConfigMap": 1,
			"StatefulSet": 0, "ServiceMonitor": 0, "PodMonitor": 0, "PrometheusRule": 0, "PodDisruptionBudget": 0,
			"NetworkPolicy": 0, "Secret": 0,
		},
	}, {
		name: "everything on",
		args: allOptional,
		kinds: map[string]int{
			"CustomResourceDefinition": 5, "ServiceAccount": 1, "ClusterRole": 5, "ClusterRoleBinding": 2,
			"Role": 1, "RoleBinding": 1, "Deployment": 2, "Service": 4, "ConfigMap": 2,
			"StatefulSet": 1, "ServiceMonitor": 1, "PodMonitor": 1, "PrometheusRule": 1, "PodDisruptionBudget": 1,
			// NATS' and Redis'; the generated NATS credentials (Redis's
			// come from an existingSecret).
			"NetworkPolicy": 2, "Secret": 1,
		},
	}}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ns := env.CreateNamespace(t, fmt.Sprintf("helm-template-%d", i), restricted)
			rendered := renderChart(t, ns, tc.args...)
			objs := splitYAML(t, rendered)
			for kind, n := range tc.kinds {
				find(t, objs, kind, n)
			}
			for _, o := range objs {
				if o.GetNamespace() != "" && o.GetNamespace() != ns {
					t.Errorf("%s %s in namespace %q, want the release's %q", o.GetKind(), o.GetName(), o.GetNamespace(), ns)
				}
			}
			checkCRDsKept(t, objs)
			checkOperatorDeployment(t, objs)
			if slices.Contains(tc.args, "nats.enabled=true") {
				checkNATS(t, objs)
			}
			if out, err := kubectl(rendered, "apply", "--server-side", "--dry-run=server", "--field-manager=helm-template-test", "-f", "-"); err != nil {
				t.Fatalf("server-side dry run: %v\n%s", err, out)
			}
			for _, pod := range podsOf(t, objs, ns) {
				if err := env.Client.Create(context.Background(), pod, client.DryRunAll); err != nil {
					t.Errorf("pod of %s refused in a namespace enforcing PodSecurity restricted: %v", pod.Name, err)
				}
			}
		})
	}
}

// checkCRDsKept: helm must never delete the CRDs (and with them every
// account and its credentials Secret) on uninstall.
func checkCRDsKept(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, crd := range find(t, objs, "CustomResourceDefinition", -1) {
		if crd.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
			t.Errorf("CRD %s lacks helm.sh/resource-policy: keep", crd.GetName())
		}
	}
}

// checkOperatorDeployment checks the operator's wiring to cmd/mailfleet's
// flags and its security context.
func checkOperatorDeployment(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	d := operatorDeployment(t, objs)
	c := d.Spec.Template.Spec.Containers[0]
	if c.Name != "manager" || len(c.Args) == 0 || c.Args[0] != "operator" {
		t.Errorf("container %s args %v, want manager running the operator subcommand", c.Name, c.Args)
	}
	for _, want := range []string{"--leader-elect=true", "--leader-election-namespace=" + d.Namespace, "--log-level=info", "--metrics-secure=true"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("args %v lack %s", c.Args, want)
		}
	}
	if got := envValue(c, "MAILFLEET_IMAGE"); got != c.Image || !strings.HasPrefix(c.Image, "ghcr.io/mailfleet/mailfleet:") {
		t.Errorf("image %q, MAILFLEET_IMAGE %q: relays must run the operator's image", c.Image, got)
	}
	ps := d.Spec.Template.Spec.SecurityContext
	if ps == nil || !ptr.Deref(ps.RunAsNonRoot, false) || ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext %+v, want runAsNonRoot and seccomp RuntimeDefault", ps)
	}
	sc := c.SecurityContext
	if sc == nil || !ptr.Deref(sc.ReadOnlyRootFilesystem, false) || ptr.Deref(sc.AllowPrivilegeEscalation, true) ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("container securityContext %+v, want read-only root, no privilege escalation, drop ALL", sc)
	}
}

func operatorDeployment(t *testing.T, objs []*unstructured.Unstructured) *appsv1.Deployment {
	t.Helper()
	for _, o := range find(t, objs, "Deployment", -1) {
		if o.GetLabels()["app.kubernetes.io/component"] == "operator" {
			d := &appsv1.Deployment{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, d); err != nil {
				t.Fatal(err)
			}
			return d
		}
	}
	t.Fatal("no operator Deployment rendered")
	return nil
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// checkNATS: the basic JetStream fsyncs before it acknowledges
// (sync_interval: always), and runs three nodes that route to each other.
func checkNATS(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	var conf string
	for _, cm := range find(t, objs, "ConfigMap", -1) {
		if s, ok, _ := unstructured.NestedString(cm.Object, "data", "nats.conf"); ok {
			conf = s
		}
	}
	if !regexp.MustCompile(`(?m)^\s*sync_interval:\s*always\s*$`).MatchString(conf) {
		t.Errorf("nats.conf does not set sync_interval: always:\n%s", conf)
	}
	if n := strings.Count(conf, "nats://"); n != 3 {
		t.Errorf("nats.conf has %d routes, want 3:\n%s", n, conf)
	}
	sts := find(t, objs, "StatefulSet", 1)[0]
	if r, _, _ := unstructured.NestedInt64(sts.Object, "spec", "replicas"); r != 3 {
		t.Errorf("NATS StatefulSet replicas %d, want 3", r)
	}
}

// podsOf returns the pod each Deployment and StatefulSet would create.
func podsOf(t *testing.T, objs []*unstructured.Unstructured, ns string) []*corev1.Pod {
	t.Helper()
	var pods []*corev1.Pod
	for _, o := range objs {
		var tmpl corev1.PodTemplateSpec
		switch o.GetKind() {
		case "Deployment":
			d := &appsv1.Deployment{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, d); err != nil {
				t.Fatal(err)
			}
			tmpl = d.Spec.Template
		case "StatefulSet":
			s := &appsv1.StatefulSet{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, s); err != nil {
				t.Fatal(err)
			}
			tmpl = s.Spec.Template
			// The StatefulSet controller adds a volume per claim template.
			for _, pvc := range s.Spec.VolumeClaimTemplates {
				tmpl.Spec.Volumes = append(tmpl.Spec.Volumes, corev1.Volume{
					Name:         pvc.Name,
					VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: pvc.Name + "-" + o.GetName() + "-0"}},
				})
			}
		default:
			continue
		}
		pods = append(pods, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: o.GetName(), Namespace: ns, Labels: tmpl.Labels},
			Spec:       tmpl.Spec,
		})
	}
	if len(pods) == 0 {
		t.Fatal("no pod templates rendered")
	}
	return pods
}

// TestChartPodSecurityEnforced shows the restricted check above has teeth: a
// pod adding a capability is refused in the same kind of namespace.
func TestChartPodSecurityEnforced(t *testing.T) {
	ns := env.CreateNamespace(t, "helm-psa", restricted)
	pods := podsOf(t, splitYAML(t, renderChart(t, ns)), ns)
	bad := pods[0]
	bad.Spec.Containers[0].SecurityContext.Capabilities.Add = []corev1.Capability{"NET_RAW"}
	if err := env.Client.Create(context.Background(), bad, client.DryRunAll); !apierrors.IsForbidden(err) {
		t.Fatalf("pod adding NET_RAW: err = %v, want Forbidden", err)
	}
}

// TestChartFromConfig: the chart's CRDs and RBAC rules are config/'s,
// which controller-gen generates (`make chart-sync` copies them; `make
// chart-check` compares the files; this compares what helm renders).
func TestChartFromConfig(t *testing.T) {
	objs := splitYAML(t, renderChart(t, "mailfleet-system"))

	crds := map[string]*unstructured.Unstructured{}
	for _, c := range find(t, objs, "CustomResourceDefinition", -1) {
		crds[c.GetName()] = c
	}
	files, err := filepath.Glob(filepath.Join(repoRoot, "config", "crd", "bases", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("config/crd/bases: %v (%d files)", err, len(files))
	}
	for _, f := range files {
		want := readYAML(t, f)
		got := crds[want.GetName()]
		if got == nil {
			t.Errorf("the chart renders no CRD %s", want.GetName())
			continue
		}
		if !reflect.DeepEqual(got.Object["spec"], want.Object["spec"]) {
			t.Errorf("CRD %s: the chart's spec differs from %s; run make chart-sync", want.GetName(), f)
		}
	}
	if len(crds) != len(files) {
		t.Errorf("the chart renders %d CRDs, config/crd/bases has %d", len(crds), len(files))
	}

	for _, pair := range []struct{ kind, name, file string }{
		{"ClusterRole", "mailfleet-operator", "role.yaml"},
		{"Role", "mailfleet-leader-election", "leader_election_role.yaml"},
	} {
		var got, want struct {
			Rules []rbacv1.PolicyRule `json:"rules"`
		}
		fromUnstructured(t, byName(t, objs, pair.kind, pair.name), &got)
		fromUnstructured(t, readYAML(t, filepath.Join(repoRoot, "config", "rbac", pair.file)), &want)
		if len(want.Rules) == 0 || !reflect.DeepEqual(got.Rules, want.Rules) {
			t.Errorf("%s rules differ from config/rbac/%s; run make chart-sync\nchart:  %+v\nconfig: %+v", pair.kind, pair.file, got.Rules, want.Rules)
		}
	}
	// Written by hand in both places (make chart-sync copies only what
	// controller-gen generates): the metrics endpoint's roles must agree.
	for _, pair := range []struct{ name, file string }{
		{"mailfleet-operator-metrics-auth", "metrics_auth_role.yaml"},
		{"mailfleet-metrics-reader", "metrics_reader_role.yaml"},
	} {
		var want *unstructured.Unstructured
		for _, o := range readYAMLDocs(t, filepath.Join(repoRoot, "config", "rbac", pair.file)) {
			if o.GetKind() == "ClusterRole" && o.GetName() == pair.name {
				want = o
			}
		}
		if want == nil {
			t.Fatalf("config/rbac/%s has no ClusterRole %s", pair.file, pair.name)
		}
		if got := rulesOf(t, byName(t, objs, "ClusterRole", pair.name)); !reflect.DeepEqual(got, rulesOf(t, want)) {
			t.Errorf("ClusterRole %s: the chart's rules differ from config/rbac/%s\nchart:  %+v\nconfig: %+v", pair.name, pair.file, got, rulesOf(t, want))
		}
	}
}

func readYAML(t *testing.T, path string) *unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	objs := splitYAML(t, data)
	if len(objs) != 1 {
		t.Fatalf("%s: %d documents, want 1", path, len(objs))
	}
	return objs[0]
}

func fromUnstructured(t *testing.T, u *unstructured.Unstructured, into any) {
	t.Helper()
	data, err := json.Marshal(u.Object)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		t.Fatal(err)
	}
}

// TestChartRelayAllowLists: the chart passes the administrator's allow lists
// for what relays may run and request to the operator, and none by default.
func TestChartRelayAllowLists(t *testing.T) {
	args := func(set ...string) []string {
		objs := splitYAML(t, renderChart(t, "mailfleet-system", set...))
		return operatorDeployment(t, objs).Spec.Template.Spec.Containers[0].Args
	}
	for _, a := range args() {
		if strings.HasPrefix(a, "--relay-allowed-") {
			t.Errorf("default args carry %s", a)
		}
	}
	got := args("--set", "relayAllowedImages={registry.example/mailfleet:,registry.example/relay:v2}",
		"--set", "relayAllowedClusterIssuers={letsencrypt}", "--set", "relayAllowedHostnames={*.mail.example,smtp.example.com}")
	for _, want := range []string{
		"--relay-allowed-images=registry.example/mailfleet:,registry.example/relay:v2",
		"--relay-allowed-cluster-issuers=letsencrypt",
		"--relay-allowed-hostnames=*.mail.example,smtp.example.com",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("args %v lack %s", got, want)
		}
	}
}
