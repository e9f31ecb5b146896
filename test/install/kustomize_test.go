package install

import (
	"strings"
	"testing"
)

// TestKustomizeDefaultDryRun has the API server judge `kubectl apply -k
// config/default` (the operator's namespace for real, since a dry run
// creates nothing to put the rest in). --force-conflicts: the chart's
// install test may own the same CRDs, and a dry run takes nothing from it.
func TestKustomizeDefaultDryRun(t *testing.T) {
	env.CreateNamespace(t, "mailfleet-system", nil)
	out, err := kubectl(nil, "apply", "--server-side", "--dry-run=server", "--field-manager=kustomize-test", "--force-conflicts", "-k", "config/default")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		"customresourcedefinition.apiextensions.k8s.io/smtprelays.mailfleet.io",
		"clusterrole.rbac.authorization.k8s.io/mailfleet-operator",
		"clusterrole.rbac.authorization.k8s.io/mailfleet-operator-metrics-auth",
		"clusterrolebinding.rbac.authorization.k8s.io/mailfleet-operator-metrics-auth",
		"clusterrole.rbac.authorization.k8s.io/mailfleet-metrics-reader",
		"clusterrole.rbac.authorization.k8s.io/mailfleet-edit",
		"clusterrole.rbac.authorization.k8s.io/mailfleet-view",
		"deployment.apps/mailfleet-operator",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("kubectl apply -k config/default did not apply %s:\n%s", want, out)
		}
	}
}
