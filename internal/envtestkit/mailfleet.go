package envtestkit

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/v1alpha1/v1alpha1test"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/certs"
)

// CreateRelay creates v1alpha1test.Relay(ns, name, opts...). envtest runs no
// namespace controller, so a test's namespace never goes away: the relay is
// deleted when the test ends, which keeps later tests' managers from
// reconciling it.
func (e *Env) CreateRelay(t testing.TB, ns, name string, opts ...func(*v1.SmtpRelay)) *v1.SmtpRelay {
	t.Helper()
	relay := v1alpha1test.Relay(ns, name, opts...)
	if err := e.Client.Create(context.Background(), relay); err != nil {
		t.Fatalf("create relay: %v", err)
	}
	t.Cleanup(func() { e.Client.Delete(context.Background(), relay) })
	return relay
}

// CreateAccount creates an SmtpAccount of the relay relayNS/relay (relayNS
// "" is the account's own namespace).
func (e *Env) CreateAccount(t testing.TB, ns, name, relayNS, relay string, muts ...func(*v1.SmtpAccount)) *v1.SmtpAccount {
	t.Helper()
	a := &v1.SmtpAccount{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       v1.SmtpAccountSpec{RelayRef: v1.RelayReference{Name: relay, Namespace: relayNS}},
	}
	for _, m := range muts {
		m(a)
	}
	if err := e.Client.Create(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	return a
}

// CreateLabel creates an SmtpLabel of an account.
func (e *Env) CreateLabel(t testing.TB, ns, name, account, labelID string) *v1.SmtpLabel {
	t.Helper()
	l := &v1.SmtpLabel{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       v1.SmtpLabelSpec{AccountRef: account, LabelID: labelID},
	}
	if err := e.Client.Create(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	return l
}

// SetSuspended patches an account's spec.suspended as kubectl patch would.
// An update of an object read just before could conflict with the
// operator's status writes, which may land in between.
func (e *Env) SetSuspended(t testing.TB, ns, name string, suspended bool) {
	t.Helper()
	a := &v1.SmtpAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	patch := []byte(`{"spec":{"suspended":` + strconv.FormatBool(suspended) + `}}`)
	if err := e.Client.Patch(context.Background(), a, client.RawPatch(types.MergePatchType, patch)); err != nil {
		t.Fatal(err)
	}
}

// WaitRelayReady waits for the relay's Ready condition to have the given
// status and reason at its current generation, and returns the relay as it
// then was.
func (e *Env) WaitRelayReady(t testing.TB, timeout time.Duration, relay *v1.SmtpRelay, status metav1.ConditionStatus, reason string) *v1.SmtpRelay {
	t.Helper()
	got := &v1.SmtpRelay{}
	Eventually(t, timeout, func() error {
		if err := e.Get(got, relay.Namespace, relay.Name); err != nil {
			return err
		}
		c := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady)
		if c == nil || c.Status != status || c.Reason != reason || c.ObservedGeneration != got.Generation {
			return fmt.Errorf("Ready condition = %+v, want %s/%s at generation %d", c, status, reason, got.Generation)
		}
		return nil
	})
	return got
}

// CreateIssuer creates a self-signed cert-manager Issuer.
func (e *Env) CreateIssuer(t testing.TB, ns, name string) {
	t.Helper()
	iss := &certmanagerv1.Issuer{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       certmanagerv1.IssuerSpec{IssuerConfig: certmanagerv1.IssuerConfig{SelfSigned: &certmanagerv1.SelfSignedIssuer{}}},
	}
	if err := e.Client.Create(context.Background(), iss); err != nil {
		t.Fatalf("create issuer: %v", err)
	}
}

// IssueRelayCertificate plays cert-manager for a relay's Certificate (which
// the operator creates): it writes the Secret with CreateTLSSecret once the
// Certificate exists, marks it Ready, and returns the issuing CA's
// certificate (PEM).
func (e *Env) IssueRelayCertificate(t testing.TB, timeout time.Duration, ns, certName, secretName string) []byte {
	t.Helper()
	caPEM := e.CreateTLSSecret(t, ns, secretName)
	Eventually(t, timeout, func() error { return e.Get(&certmanagerv1.Certificate{}, ns, certName) })
	if err := MarkCertificateReady(context.Background(), e.Client, ns, certName); err != nil {
		t.Fatal(err)
	}
	return caPEM
}

// CreateTLSSecret writes a kubernetes.io/tls Secret for smtp.example.com,
// signed by a CA made for the test, and returns the CA's certificate (PEM).
func (e *Env) CreateTLSSecret(t testing.TB, ns, name string) []byte {
	t.Helper()
	ca, err := certs.GenerateCA("mailfleet test CA")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue([]string{"smtp.example.com"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}
	if err := e.Client.Create(context.Background(), secret); err != nil {
		t.Fatalf("create TLS secret: %v", err)
	}
	return ca.CertPEM
}

// MarkDeploymentReady is MarkDeploymentReady on the Env's API server,
// failing the test on an error.
func (e *Env) MarkDeploymentReady(t testing.TB, ns, name string) {
	t.Helper()
	if err := MarkDeploymentReady(context.Background(), e.Client, ns, name); err != nil {
		t.Fatal(err)
	}
}

// GetSecret reads a Secret, failing the test if it cannot.
func (e *Env) GetSecret(t testing.TB, ns, name string) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{}
	if err := e.Get(s, ns, name); err != nil {
		t.Fatal(err)
	}
	return s
}

// WaitSecret waits until the Secret exists and check accepts it.
func (e *Env) WaitSecret(t testing.TB, timeout time.Duration, ns, name string, check func(*corev1.Secret) error) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{}
	Eventually(t, timeout, func() error {
		if err := e.Get(s, ns, name); err != nil {
			return err
		}
		return check(s)
	})
	return s
}

// WatchShard records the content of every version of a credentials shard
// Secret from now on; the returned function stops the watch and returns
// them.
func (e *Env) WatchShard(t testing.TB, ns, name string) func() []string {
	t.Helper()
	w, err := kubernetes.NewForConfigOrDie(e.Config).CoreV1().Secrets(ns).Watch(context.Background(),
		metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()})
	if err != nil {
		t.Fatal(err)
	}
	var versions []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			if s, ok := ev.Object.(*corev1.Secret); ok && ev.Type != watch.Error {
				versions = append(versions, string(s.Data[wire.ShardDataKey]))
			}
		}
	}()
	return func() []string {
		w.Stop()
		<-done
		return versions
	}
}
