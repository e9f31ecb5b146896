package install

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/controllers"
)

const (
	aggregateToAdmin = "rbac.authorization.k8s.io/aggregate-to-admin"
	aggregateToEdit  = "rbac.authorization.k8s.io/aggregate-to-edit"
	aggregateToView  = "rbac.authorization.k8s.io/aggregate-to-view"
)

// TestTenantRolesRendered checks what the API server cannot, since envtest
// runs no kube-controller-manager to aggregate ClusterRoles: the chart's
// mailfleet-edit and mailfleet-view carry the labels that fold them into
// the built-in admin, edit and view (and none with
// rbac.aggregateToDefaultRoles=false), name no subresource, and have the
// rules of config/rbac/tenant_roles.yaml, kustomize's copy. What the rules
// allow is TestChartInstall/tenant_roles's, against the API server.
func TestTenantRolesRendered(t *testing.T) {
	want := map[string]map[string]bool{
		"mailfleet-edit": {aggregateToAdmin: true, aggregateToEdit: true, aggregateToView: false},
		"mailfleet-view": {aggregateToAdmin: false, aggregateToEdit: false, aggregateToView: true},
	}
	config := map[string]*unstructured.Unstructured{}
	for _, o := range readYAMLDocs(t, filepath.Join(repoRoot, "config", "rbac", "tenant_roles.yaml")) {
		config[o.GetName()] = o
	}
	for _, aggregate := range []bool{true, false} {
		t.Run(fmt.Sprintf("aggregateToDefaultRoles=%v", aggregate), func(t *testing.T) {
			objs := splitYAML(t, renderChart(t, "mailfleet-system", "--set", fmt.Sprintf("rbac.aggregateToDefaultRoles=%v", aggregate)))
			for name, labels := range want {
				role := byName(t, objs, "ClusterRole", name)
				for label, on := range labels {
					got, found := role.GetLabels()[label]
					if aggregate && on && got != "true" {
						t.Errorf("ClusterRole %s: label %s = %q, want \"true\"", name, label, got)
					}
					if (!aggregate || !on) && found {
						t.Errorf("ClusterRole %s carries %s=%q: it would be aggregated where it must not be", name, label, got)
					}
				}
				rules := rulesOf(t, role)
				for _, r := range rules {
					for _, res := range r.Resources {
						if strings.Contains(res, "/") || res == "*" {
							t.Errorf("ClusterRole %s grants %q: tenants get no subresource (status is the operator's, scale the platform team's)", name, res)
						}
					}
					if slices.Contains(r.Resources, "smtprelays") && !reflect.DeepEqual(r.Verbs, []string{"get", "list", "watch"}) {
						t.Errorf("ClusterRole %s grants %v on smtprelays, want read only", name, r.Verbs)
					}
				}
				cfg := config[name]
				if cfg == nil {
					t.Fatalf("config/rbac/tenant_roles.yaml has no ClusterRole %s", name)
				}
				if !reflect.DeepEqual(rules, rulesOf(t, cfg)) {
					t.Errorf("ClusterRole %s: the chart's rules differ from config/rbac/tenant_roles.yaml\nchart:  %+v\nconfig: %+v", name, rules, rulesOf(t, cfg))
				}
				for label, on := range labels {
					if got := cfg.GetLabels()[label]; (got == "true") != on {
						t.Errorf("config/rbac/tenant_roles.yaml %s: label %s = %q, want it only where the chart sets it", name, label, got)
					}
				}
			}
		})
	}
}

// checkTenantRoles binds the installed chart's mailfleet-edit and
// mailfleet-view in one namespace, as a namespace's admin would get them
// through aggregation, and acts as those users through impersonation
// against the real API server.
func checkTenantRoles(t *testing.T) {
	ctx := context.Background()
	mine := env.CreateNamespace(t, "tenant-a", nil)
	other := env.CreateNamespace(t, "tenant-b", nil)
	for user, role := range map[string]string{"alice": "mailfleet-edit", "bob": "mailfleet-view"} {
		rb := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: mine},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
		}
		if err := env.Client.Create(ctx, rb); err != nil {
			t.Fatal(err)
		}
	}
	alice, bob := impersonate(t, "alice"), impersonate(t, "bob")

	// The platform team's relay, valid (the admin creates it), so that a
	// refusal below is RBAC's and not validation's.
	relay := sampleRelay(t, mine)
	relay.Name = "tenant-relay"
	relayCopy := relay.DeepCopy()
	if err := alice.Create(ctx, relayCopy); !apierrors.IsForbidden(err) {
		t.Errorf("mailfleet-edit creating an SmtpRelay: err = %v, want Forbidden", err)
	}
	if err := env.Client.Create(ctx, relay); err != nil {
		t.Fatalf("the admin creating the same SmtpRelay: %v", err)
	}

	account := &v1.SmtpAccount{
		ObjectMeta: metav1.ObjectMeta{Name: "acme", Namespace: mine},
		Spec:       v1.SmtpAccountSpec{RelayRef: v1.RelayReference{Name: relay.Name}},
	}
	label := &v1.SmtpLabel{
		ObjectMeta: metav1.ObjectMeta{Name: "acme-receipts", Namespace: mine},
		Spec:       v1.SmtpLabelSpec{AccountRef: account.Name, LabelID: "1001"},
	}
	mustAllow := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %v, want allowed", what, err)
		}
	}
	mustForbid := func(what string, err error) {
		t.Helper()
		if !apierrors.IsForbidden(err) {
			t.Errorf("%s: err = %v, want Forbidden", what, err)
		}
	}

	// mailfleet-edit writes accounts and labels in its namespace ...
	mustAllow("mailfleet-edit creating an SmtpAccount", alice.Create(ctx, account))
	mustAllow("mailfleet-edit creating an SmtpLabel", alice.Create(ctx, label))
	mustAllow("mailfleet-edit patching its SmtpAccount", alice.Patch(ctx, account,
		client.RawPatch(types.MergePatchType, []byte(`{"spec":{"budgetPerMinute":100}}`))))
	mustAllow("mailfleet-edit listing SmtpAccounts", alice.List(ctx, &v1.SmtpAccountList{}, client.InNamespace(mine)))
	mustAllow("mailfleet-edit reading the SmtpRelay", alice.Get(ctx, client.ObjectKeyFromObject(relay), &v1.SmtpRelay{}))
	mustAllow("mailfleet-edit listing SmtpRelays", alice.List(ctx, &v1.SmtpRelayList{}, client.InNamespace(mine)))
	// ... but never a status: what the operator reports is the operator's.
	status := client.RawPatch(types.MergePatchType, []byte(`{"status":{"apiUser":"someone-else","secretName":"other"}}`))
	mustForbid("mailfleet-edit patching its SmtpAccount's status", alice.Status().Patch(ctx, account, status))
	mustForbid("mailfleet-edit patching its SmtpLabel's status", alice.Status().Patch(ctx, label, status))
	mustForbid("mailfleet-edit patching the SmtpRelay's status", alice.Status().Patch(ctx, relay, status))
	// ... nor the platform team's relay, nor its scale.
	mustForbid("mailfleet-edit patching the SmtpRelay", alice.Patch(ctx, relay,
		client.RawPatch(types.MergePatchType, []byte(`{"spec":{"accounts":{"namespaces":{"from":"All"}}}}`))))
	mustForbid("mailfleet-edit deleting the SmtpRelay", alice.Delete(ctx, relay))
	scale := &autoscalingv1.Scale{Spec: autoscalingv1.ScaleSpec{Replicas: 10}}
	mustForbid("mailfleet-edit scaling the SmtpRelay", alice.SubResource("scale").Update(ctx, relay, client.WithSubResourceBody(scale)))
	// ... nor anything in another namespace, or across all of them.
	elsewhere := account.DeepCopy()
	elsewhere.Namespace, elsewhere.ResourceVersion = other, ""
	mustForbid("mailfleet-edit creating an SmtpAccount in another namespace", alice.Create(ctx, elsewhere))
	mustForbid("mailfleet-edit listing SmtpAccounts in another namespace", alice.List(ctx, &v1.SmtpAccountList{}, client.InNamespace(other)))
	mustForbid("mailfleet-edit listing SmtpAccounts in every namespace", alice.List(ctx, &v1.SmtpAccountList{}))

	// mailfleet-view reads all three and writes nothing.
	mustAllow("mailfleet-view reading the SmtpAccount", bob.Get(ctx, client.ObjectKeyFromObject(account), &v1.SmtpAccount{}))
	mustAllow("mailfleet-view listing SmtpLabels", bob.List(ctx, &v1.SmtpLabelList{}, client.InNamespace(mine)))
	mustAllow("mailfleet-view listing SmtpRelays", bob.List(ctx, &v1.SmtpRelayList{}, client.InNamespace(mine)))
	other2 := account.DeepCopy()
	other2.Name, other2.ResourceVersion = "bobs", ""
	mustForbid("mailfleet-view creating an SmtpAccount", bob.Create(ctx, other2))
	mustForbid("mailfleet-view patching an SmtpAccount", bob.Patch(ctx, account,
		client.RawPatch(types.MergePatchType, []byte(`{"spec":{"budgetPerMinute":1}}`))))
	mustForbid("mailfleet-view patching an SmtpAccount's status", bob.Status().Patch(ctx, account, status))
	mustForbid("mailfleet-view deleting an SmtpLabel", bob.Delete(ctx, label))
	mustForbid("mailfleet-view listing SmtpAccounts in another namespace", bob.List(ctx, &v1.SmtpAccountList{}, client.InNamespace(other)))

	// Last, mailfleet-edit deletes what it made.
	mustAllow("mailfleet-edit deleting its SmtpLabel", alice.Delete(ctx, label))
	mustAllow("mailfleet-edit deleting its SmtpAccount", alice.Delete(ctx, account))
	if err := env.Client.Delete(ctx, relay); err != nil {
		t.Error(err)
	}
}

// impersonate is a client of the test's API server acting as user, as an
// authenticated user with no other groups.
func impersonate(t *testing.T, user string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:authenticated"}}
	c, err := client.New(cfg, client.Options{Scheme: controllers.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// sampleRelay is config/samples' SmtpRelay in namespace ns.
func sampleRelay(t *testing.T, ns string) *v1.SmtpRelay {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "config", "samples", "mailfleet_v1alpha1_smtprelay.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	relay := &v1.SmtpRelay{}
	if err := yaml.Unmarshal(data, relay); err != nil {
		t.Fatal(err)
	}
	relay.Namespace = ns
	return relay
}

// byName returns the rendered object of a kind and name.
func byName(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range find(t, objs, kind, -1) {
		if o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s rendered", kind, name)
	return nil
}

func rulesOf(t *testing.T, role *unstructured.Unstructured) []rbacv1.PolicyRule {
	t.Helper()
	var r struct {
		Rules []rbacv1.PolicyRule `json:"rules"`
	}
	fromUnstructured(t, role, &r)
	if len(r.Rules) == 0 {
		t.Fatalf("%s %s has no rules", role.GetKind(), role.GetName())
	}
	return r.Rules
}

// readYAMLDocs reads every document of a YAML file.
func readYAMLDocs(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return splitYAML(t, data)
}
