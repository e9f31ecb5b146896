package controllers

import (
	"context"
	"fmt"
	"testing"
	"time"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/v1alpha1/v1alpha1test"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

// Issue 12.22: the operator did not start on a cluster without
// cert-manager. On an API server without cert-manager's CRDs it now starts,
// serves a relay that brings its own TLS Secret, stops a relay that names an
// issuer at CertManagerMissing, and picks cert-manager up, without a
// restart, once its CRDs are installed.
func TestRelayWithoutCertManager(t *testing.T) {
	ctx := context.Background()
	cfg, c := envtestkit.StartAPIServer(t, Scheme(), envtestkit.MailfleetCRDs())
	env.RunManagerAs(t, cfg, withIndexes((&RelayReconciler{Options: testRenderOptions, CertManagerPoll: 200 * time.Millisecond}).SetupWithManager))
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mail"}}); err != nil {
		t.Fatal(err)
	}
	tlsSecret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "own-tls", Namespace: "mail"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: []byte("cert"), corev1.TLSPrivateKeyKey: []byte("key")}}
	own := v1alpha1test.Relay("mail", "own", v1alpha1test.WithSecretName("own-tls"))
	issued := v1alpha1test.Relay("mail", "issued")
	for _, obj := range []client.Object{tlsSecret, own, issued} {
		if err := c.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	// waitRelay waits until the relay's Ready condition speaks of its
	// generation with reason (what names the relay in the error), and then
	// check passes.
	waitRelay := func(name, reason, what string, check func() error) {
		t.Helper()
		envtestkit.Eventually(t, relayWait, func() error {
			var r v1.SmtpRelay
			if err := c.Get(ctx, client.ObjectKey{Namespace: "mail", Name: name}, &r); err != nil {
				return err
			}
			cond := meta.FindStatusCondition(r.Status.Conditions, v1.ConditionReady)
			if cond == nil || cond.ObservedGeneration != r.Generation {
				return fmt.Errorf("relay %s not reconciled yet", name)
			}
			if cond.Reason != reason {
				return fmt.Errorf("%s: %s %s", what, cond.Reason, cond.Message)
			}
			return check()
		})
	}
	waitRelay("own", v1.ReasonReplicasNotReady, "own TLS relay", func() error {
		return c.Get(ctx, client.ObjectKey{Namespace: "mail", Name: "own"}, &appsv1.Deployment{})
	})
	waitRelay("issued", v1.ReasonCertManagerMissing, "issuer relay", func() error {
		var events eventsv1.EventList
		if err := c.List(ctx, &events, client.InNamespace("mail")); err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.Regarding.Name == "issued" && e.Reason == v1.ReasonCertManagerMissing && e.Type == corev1.EventTypeWarning {
				return nil
			}
		}
		return fmt.Errorf("no CertManagerMissing event")
	})

	certManager, err := envtestkit.CertManagerCRDs()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{Paths: []string{certManager}}); err != nil {
		t.Fatal(err)
	}
	waitRelay("issued", v1.ReasonIssuerNotFound, "after installing cert-manager", func() error {
		return c.Get(ctx, client.ObjectKey{Namespace: "mail", Name: "issued"}, &certmanagerv1.Certificate{})
	})
}
