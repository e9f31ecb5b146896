package controllers

import (
	"context"
	"errors"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

// Issue 12.17: a credentials Secret the API server refused to store left no
// condition and no Event, only a retry in the operator's log. Here a
// ValidatingAdmissionPolicy (run by the API server itself, as a platform's
// policy or a full quota would be) refuses Secrets in the tenant's
// namespace: the account says so, and recovers once the policy is lifted.
func TestAccountSecretWriteRefused(t *testing.T) {
	ctx := context.Background()
	ns := startAccountsWithRelay(t)
	name := "freeze-" + ns
	policy := &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionv1.Fail),
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionv1.RuleWithOperations{
					Operations: []admissionv1.OperationType{admissionv1.Create, admissionv1.Update},
					Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"secrets"}},
				},
			}}},
			Validations: []admissionv1.Validation{{Expression: "false", Message: "Secrets are frozen in this namespace"}},
		},
	}
	binding := &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        name,
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
			MatchResources: &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}},
		},
	}
	for _, obj := range []client.Object{policy, binding} {
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { env.Client.Delete(context.Background(), obj) })
	}
	// The API server loads the policy through an informer: wait until it bites.
	envtestkit.Eventually(t, wait, func() error {
		probe := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: ns}}
		if err := env.Client.Create(ctx, probe); err == nil {
			env.Client.Delete(ctx, probe)
			return errors.New("the policy does not refuse Secrets yet")
		}
		return nil
	})
	acc := waitReason(t, env.CreateAccount(t, ns, "shop", "", "mx"), v1.ReasonSecretWriteFailed)
	if msg := readyMessage(acc); !strings.Contains(msg, "shop-smtp-credentials") || !strings.Contains(msg, "frozen") {
		t.Errorf("message %q does not say which Secret and why", msg)
	}
	waitEventAbout(t, acc, v1.ReasonSecretWriteFailed)
	if err := env.Client.Delete(ctx, binding); err != nil {
		t.Fatal(err)
	}
	// The account looks again on its own (secretWaitInterval).
	waitReasonWithin(t, acc, v1.ReasonReady, 3*secretWaitInterval)
}
