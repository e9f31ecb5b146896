package controllers

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
)

// Attack (issue 12.15): an SmtpRelay named like an existing Service took it
// over (server-side apply with force rewrote its selector and ports, and
// the garbage collector would have deleted it with the relay). The relay
// now refuses with NameConflict, naming only the kind and name, and the
// Service keeps what its owner wrote.
func TestAttackRelayTakesOverService(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, nil)
	startRelayController(t)
	db := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "mx", Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "postgres"},
			Ports:    []corev1.ServicePort{{Name: "pg", Port: 5432, TargetPort: intstr.FromInt32(5432)}},
		},
	}
	if err := env.Client.Create(ctx, db); err != nil {
		t.Fatal(err)
	}
	relay := env.CreateRelay(t, ns, "mx")
	got := env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonNameConflict)
	if msg := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady).Message; !strings.Contains(msg, "Service mx already exists") {
		t.Errorf("message %q does not name the object", msg)
	}
	waitRelayEvent(t, relay, corev1.EventTypeWarning, v1.ReasonNameConflict)
	after := &corev1.Service{}
	if err := env.Get(after, ns, "mx"); err != nil {
		t.Fatal(err)
	}
	if after.Spec.Selector["app"] != "postgres" || len(after.Spec.Ports) != 1 || after.Spec.Ports[0].Port != 5432 || len(after.OwnerReferences) != 0 {
		t.Fatalf("the user's Service was changed: selector %v ports %v owners %v", after.Spec.Selector, after.Spec.Ports, after.OwnerReferences)
	}
	// Once the user's Service is gone, the relay makes its own (at its next
	// recheck, or, as here, the next change to it).
	if err := env.Client.Delete(ctx, db); err != nil {
		t.Fatal(err)
	}
	updateRelay(t, relay, func(r *v1.SmtpRelay) { r.Spec.Banner = "after the conflict" })
	env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonIssuerNotFound)
	if err := env.Get(after, ns, "mx"); err != nil || !metav1.IsControlledBy(after, relay) {
		t.Fatalf("the relay's own Service: %v, owners %v", err, after.OwnerReferences)
	}
}
