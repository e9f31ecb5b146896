package controllers

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// Attack (issue 12.13): a tenant whose namespace the relay does not admit
// writes its account's status (any role with */status can) to say Ready,
// with the api_user of an account it wants to impersonate, and provides a
// credentials Secret of its own. The publisher used to trust status and put
// the tenant's key on the relay. It decides from spec and its own checks
// now, so neither the tenant's nor the victim's api_user gets that key.
func TestAttackStatusTrusted(t *testing.T) {
	ctx := context.Background()
	platform, tenant := env.Namespace(t, nil), env.Namespace(t, nil)
	startPublishing(t)
	env.CreateRelay(t, platform, "mx") // admits its own namespace only
	_, verifier := relayCredentials(t, platform, "mx")

	victim := waitReason(t, env.CreateAccount(t, platform, "billing", platform, "mx"), v1.ReasonReady)
	rogue := waitReason(t, env.CreateAccount(t, tenant, "rogue", platform, "mx"), v1.ReasonNamespaceNotAllowed)
	const stolenKey = "k3y-the-tenant-chose-0123456789abcdef"
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: render.CredentialsSecretName(rogue), Namespace: tenant,
			Labels:          map[string]string{render.LabelManagedBy: render.ManagedByValue},
			OwnerReferences: []metav1.OwnerReference{render.AccountOwnerRef(rogue)},
		},
		Data: map[string][]byte{render.SecretKeyPassword: []byte(stolenKey)},
	}
	if err := env.Client.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	for _, apiUser := range []string{"rogue", render.APIUser(victim)} {
		rogue.Status.APIUser, rogue.Status.SecretName = apiUser, secret.Name
		meta.SetStatusCondition(&rogue.Status.Conditions, metav1.Condition{
			Type: v1.ConditionReady, Status: metav1.ConditionTrue, Reason: v1.ReasonReady, ObservedGeneration: rogue.Generation,
		})
		if err := env.Client.Status().Update(ctx, rogue); err != nil {
			t.Fatal(err)
		}
		// The old publisher put the key on the relay within a second.
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			for _, user := range []string{"rogue", render.APIUser(victim)} {
				if _, err := verifier.Authenticate(user, stolenKey); err == nil {
					t.Fatalf("with status.apiUser %q forged, the tenant's key logs in as %q", apiUser, user)
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(rogue), rogue); err != nil {
			t.Fatal(err)
		}
	}
}
