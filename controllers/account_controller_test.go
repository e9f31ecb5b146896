package controllers

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

// wait is how long a test gives the controllers to converge.
const wait = 10 * time.Second

// setupCredentialControllers registers the account and label controllers;
// no relay controller runs, the tests' SmtpRelays are plain objects.
func setupCredentialControllers(mgr ctrl.Manager) error {
	return withIndexes((&AccountReconciler{}).SetupWithManager, (&LabelReconciler{}).SetupWithManager)(mgr)
}

// conditioned is an SmtpAccount or SmtpLabel.
type conditioned interface {
	client.Object
	*v1.SmtpAccount | *v1.SmtpLabel
}

// waitReason waits until obj's Ready condition has reason (Ready=True for
// ReasonReady, False otherwise) for its current generation, and returns
// the object as then read.
func waitReason[T conditioned](t *testing.T, obj T, reason string) T {
	t.Helper()
	return waitReasonWithin(t, obj, reason, wait)
}

// waitReasonWithin is waitReason with a timeout of its own.
func waitReasonWithin[T conditioned](t *testing.T, obj T, reason string, timeout time.Duration) T {
	t.Helper()
	key := client.ObjectKeyFromObject(obj)
	envtestkit.Eventually(t, timeout, func() error {
		if err := env.Client.Get(context.Background(), key, obj); err != nil {
			return err
		}
		var conds []metav1.Condition
		switch o := any(obj).(type) {
		case *v1.SmtpAccount:
			conds = o.Status.Conditions
		case *v1.SmtpLabel:
			conds = o.Status.Conditions
		}
		c := meta.FindStatusCondition(conds, v1.ConditionReady)
		want := metav1.ConditionFalse
		if reason == v1.ReasonReady {
			want = metav1.ConditionTrue
		}
		if c == nil || c.Reason != reason || c.Status != want || c.ObservedGeneration != obj.GetGeneration() {
			return fmt.Errorf("%s: Ready condition %+v, want %s %s", key, c, want, reason)
		}
		return nil
	})
	return obj
}

// readyMessage is obj's Ready condition message.
func readyMessage(obj *v1.SmtpAccount) string {
	if c := meta.FindStatusCondition(obj.Status.Conditions, v1.ConditionReady); c != nil {
		return c.Message
	}
	return ""
}

// waitEventAbout waits for an events.k8s.io/v1 Event about obj with reason.
func waitEventAbout(t *testing.T, obj client.Object, reason string) eventsv1.Event {
	t.Helper()
	var found eventsv1.Event
	envtestkit.Eventually(t, wait, func() error {
		var list eventsv1.EventList
		if err := env.Client.List(context.Background(), &list, client.InNamespace(obj.GetNamespace())); err != nil {
			return err
		}
		for _, e := range list.Items {
			if e.Reason == reason && e.Regarding.Name == obj.GetName() && e.Regarding.UID == obj.GetUID() {
				found = e
				return nil
			}
		}
		return fmt.Errorf("no %s event about %s among %d events", reason, obj.GetName(), len(list.Items))
	})
	return found
}

// assertNoKeyLeak fails if any key appears in the namespace's Events or in
// the status of its accounts and labels.
func assertNoKeyLeak(t *testing.T, ns string, keys ...string) {
	t.Helper()
	ctx := context.Background()
	var evs eventsv1.EventList
	var accs v1.SmtpAccountList
	var labels v1.SmtpLabelList
	for _, l := range []client.ObjectList{&evs, &accs, &labels} {
		if err := env.Client.List(ctx, l, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
	}
	var docs []any
	for _, e := range evs.Items {
		docs = append(docs, e)
	}
	for _, a := range accs.Items {
		docs = append(docs, a.Status)
	}
	for _, l := range labels.Items {
		docs = append(docs, l.Status)
	}
	for _, d := range docs {
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if k != "" && strings.Contains(string(b), k) {
				t.Errorf("a key leaked into %s", b)
			}
		}
	}
}

// startAccounts runs the account and label controllers and returns a
// namespace of the test's own.
func startAccounts(t *testing.T) string {
	t.Helper()
	env.StartManager(t, setupCredentialControllers)
	return env.Namespace(t, nil)
}

// startAccountsWithRelay is startAccounts with an SmtpRelay "mx" in the
// namespace.
func startAccountsWithRelay(t *testing.T) string {
	t.Helper()
	ns := startAccounts(t)
	env.CreateRelay(t, ns, "mx")
	return ns
}

// waitNextSecond returns once the clock has left the second obj was
// created in, so an object created next is strictly younger (creation
// timestamps have one-second resolution).
func waitNextSecond(obj client.Object) {
	created := obj.GetCreationTimestamp().Time
	time.Sleep(time.Until(created.Add(time.Second)) + 10*time.Millisecond)
}

func TestAccountGeneratedKey(t *testing.T) {
	ns := startAccountsWithRelay(t)
	acc := env.CreateAccount(t, ns, "shop", "", "mx", func(a *v1.SmtpAccount) {
		a.Spec.Key.Generated = &v1.GeneratedKey{Bytes: 48}
		a.Spec.SecretTemplate = &v1.SecretTemplate{
			Labels:      map[string]v1.LabelValue{"team": "checkout", render.LabelAppInstance: "argo-app"},
			Annotations: map[string]string{"reloader.stakater.com/match": "true"},
		}
	})
	acc = waitReason(t, acc, v1.ReasonReady)

	s := env.GetSecret(t, ns, "shop-smtp-credentials")
	key := string(s.Data[render.SecretKeyPassword])
	if raw, err := base64.RawURLEncoding.DecodeString(key); err != nil || len(raw) != 48 {
		t.Errorf("password is %d bytes of base64url (%v), want 48", len(raw), err)
	}
	want := map[string]string{"type": "smtp", "provider": "mailfleet", "host": "mx." + ns + ".svc", "port": "587", "username": "shop"}
	for k, v := range want {
		if got := string(s.Data[k]); got != v {
			t.Errorf("data[%s] = %q, want %q", k, got, v)
		}
	}
	if !accountHolds(s, acc) || len(s.OwnerReferences) != 0 {
		t.Errorf("Secret not retained for the account: owners %+v, labels %v", s.OwnerReferences, s.Labels)
	}
	if _, ok := s.Labels[render.LabelAppInstance]; ok {
		t.Errorf("Secret carries %s: %v", render.LabelAppInstance, s.Labels)
	}
	if s.Labels["team"] != "checkout" || s.Labels[render.LabelManagedBy] != render.ManagedByValue || s.Labels[render.LabelAccount] != "shop" {
		t.Errorf("labels = %v", s.Labels)
	}
	if s.Annotations["reloader.stakater.com/match"] != "true" {
		t.Errorf("annotations = %v", s.Annotations)
	}
	st := acc.Status
	if st.APIUser != "shop" || st.SecretName != "shop-smtp-credentials" || st.KeyRotatedAt == nil ||
		st.PreviousKeyExpiresAt != nil || st.ObservedGeneration != acc.Generation {
		t.Errorf("status = %+v", st)
	}
	if acc.Spec.APIUser != "" {
		t.Errorf("spec.apiUser was written: %q", acc.Spec.APIUser)
	}
	assertNoKeyLeak(t, ns, key)
}

func TestAccountKeyReusedAcrossRestart(t *testing.T) {
	ns := env.Namespace(t, nil)
	env.CreateRelay(t, ns, "mx")
	acc := env.CreateAccount(t, ns, "shop", "", "mx")

	_, stop := env.RunManager(t, setupCredentialControllers)
	acc = waitReason(t, acc, v1.ReasonReady)
	before := env.GetSecret(t, ns, "shop-smtp-credentials")
	stop()

	env.StartManager(t, setupCredentialControllers)
	// A spec change the new operator must observe proves it reconciled.
	env.UpdateSpec(t, acc, func() { acc.Spec.BudgetPerMinute = ptr.To[int32](100) })
	acc = waitReason(t, acc, v1.ReasonReady)
	after := env.GetSecret(t, ns, "shop-smtp-credentials")
	if string(after.Data[render.SecretKeyPassword]) != string(before.Data[render.SecretKeyPassword]) {
		t.Error("the key changed across an operator restart")
	}
	if after.ResourceVersion != before.ResourceVersion {
		t.Errorf("the Secret was rewritten (resourceVersion %s -> %s)", before.ResourceVersion, after.ResourceVersion)
	}
}

func TestAccountKeyRotation(t *testing.T) {
	ctx := context.Background()
	ns := startAccountsWithRelay(t)
	acc := env.CreateAccount(t, ns, "shop", "", "mx", func(a *v1.SmtpAccount) {
		a.Spec.Key.RotationGracePeriod = &metav1.Duration{Duration: 2 * time.Second}
	})
	acc = waitReason(t, acc, v1.ReasonReady)
	old := string(env.GetSecret(t, ns, "shop-smtp-credentials").Data[render.SecretKeyPassword])

	patch := client.MergeFrom(acc.DeepCopy())
	acc.Annotations = map[string]string{render.AnnotationRotateKey: "2026-03-01"}
	if err := env.Client.Patch(ctx, acc, patch); err != nil {
		t.Fatal(err)
	}
	rotated := env.WaitSecret(t, wait, ns, "shop-smtp-credentials", func(s *corev1.Secret) error {
		if string(s.Data[render.SecretKeyPassword]) == old {
			return fmt.Errorf("key not rotated yet")
		}
		return nil
	})
	if got := string(rotated.Data[render.SecretKeyPreviousPasswordDigest]); !wire.MatchDigest(got, old) || !strings.HasPrefix(got, "pbkdf2-sha256:") {
		want := "the salted digest of the old key"
		t.Errorf("previous digest = %q, want %q", got, want)
	}
	expires := render.ParseTime(rotated.Annotations[render.AnnotationPreviousKeyExpiresAt])
	if d := time.Until(expires); d <= -time.Second || d > 3*time.Second {
		t.Errorf("previous key expires at %v (in %v), want about 2s from now", expires, d)
	}
	if rotated.Annotations[render.AnnotationRotateKeyHandled] != "2026-03-01" {
		t.Errorf("handled rotation = %q", rotated.Annotations[render.AnnotationRotateKeyHandled])
	}
	waitEventAbout(t, acc, "KeyRotated")

	// After the grace period the previous digest goes, from the Secret and status.
	env.WaitSecret(t, wait, ns, "shop-smtp-credentials", func(s *corev1.Secret) error {
		if _, ok := s.Data[render.SecretKeyPreviousPasswordDigest]; ok {
			return fmt.Errorf("previous digest still present")
		}
		if _, ok := s.Annotations[render.AnnotationPreviousKeyExpiresAt]; ok {
			return fmt.Errorf("expiry annotation still present")
		}
		return nil
	})
	envtestkit.Eventually(t, wait, func() error {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(acc), acc); err != nil {
			return err
		}
		if acc.Status.PreviousKeyExpiresAt != nil {
			return fmt.Errorf("status.previousKeyExpiresAt = %v", acc.Status.PreviousKeyExpiresAt)
		}
		return nil
	})
	final := env.GetSecret(t, ns, "shop-smtp-credentials")
	if string(final.Data[render.SecretKeyPassword]) != string(rotated.Data[render.SecretKeyPassword]) {
		t.Error("the new key changed again after the grace period")
	}
	assertNoKeyLeak(t, ns, old, string(final.Data[render.SecretKeyPassword]))
}

func TestAccountReferencedSecret(t *testing.T) {
	ctx := context.Background()
	ns := startAccountsWithRelay(t)
	acc := env.CreateAccount(t, ns, "shop", "", "mx", func(a *v1.SmtpAccount) {
		a.Spec.Key.SecretRef = &v1.SecretKeyReference{Name: "sealed-key"}
	})
	acc = waitReason(t, acc, v1.ReasonSecretNotFound)
	if msg := readyMessage(acc); !strings.Contains(msg, `"sealed-key"`) {
		t.Errorf("message does not name the Secret: %q", msg)
	}
	waitEventAbout(t, acc, v1.ReasonSecretNotFound)

	// The Secret appears (as sealed-secrets would create it), first without the key.
	ref := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "sealed-key", Namespace: ns},
		Data:       map[string][]byte{"other": []byte("x")},
	}
	if err := env.Client.Create(ctx, ref); err != nil {
		t.Fatal(err)
	}
	acc = waitReason(t, acc, v1.ReasonSecretKeyMissing)
	if msg := readyMessage(acc); !strings.Contains(msg, `"api-key"`) {
		t.Errorf("message does not name the key: %q", msg)
	}

	// Issue 12.19: a key too short to resist guessing is refused, by length.
	ref.Data = map[string][]byte{"api-key": []byte("hunter2")}
	if err := env.Client.Update(ctx, ref); err != nil {
		t.Fatal(err)
	}
	acc = waitReason(t, acc, v1.ReasonKeyTooShort)
	if msg := readyMessage(acc); !strings.Contains(msg, "has 7 characters; use at least 32") || strings.Contains(msg, "hunter2") {
		t.Errorf("message %q should give the length and the minimum, never the key", msg)
	}

	// The watch on Secrets picks the key up at once, well before the 10 s retry.
	start := time.Now()
	ref.Data = map[string][]byte{"api-key": []byte("first-referenced-key-0123456789abcdef")}
	if err := env.Client.Update(ctx, ref); err != nil {
		t.Fatal(err)
	}
	acc = waitReason(t, acc, v1.ReasonReady)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("picked up after %v", d)
	}
	s := env.GetSecret(t, ns, "shop-smtp-credentials")
	if got := string(s.Data[render.SecretKeyPassword]); got != "first-referenced-key-0123456789abcdef" {
		t.Errorf("password = %q", got)
	}

	// Changing the referenced key is a rotation, with the same grace.
	ref.Data = map[string][]byte{"api-key": []byte("second-referenced-key-0123456789abcdef")}
	if err := env.Client.Update(ctx, ref); err != nil {
		t.Fatal(err)
	}
	s = env.WaitSecret(t, wait, ns, "shop-smtp-credentials", func(s *corev1.Secret) error {
		if string(s.Data[render.SecretKeyPassword]) != "second-referenced-key-0123456789abcdef" {
			return fmt.Errorf("password not updated")
		}
		return nil
	})
	if got := string(s.Data[render.SecretKeyPreviousPasswordDigest]); !wire.MatchDigest(got, "first-referenced-key-0123456789abcdef") {
		want := "the digest of the first key"
		t.Errorf("previous digest = %q, want %q", got, want)
	}
	waitEventAbout(t, acc, "KeyRotated")
	assertNoKeyLeak(t, ns, "first-referenced-key-0123456789abcdef", "second-referenced-key-0123456789abcdef")
}

func TestAccountForeignSecret(t *testing.T) {
	ctx := context.Background()
	ns := startAccountsWithRelay(t)
	foreign := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "shop-smtp-credentials", Namespace: ns},
		Data:       map[string][]byte{"password": []byte("someone-elses")},
	}
	if err := env.Client.Create(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	acc := env.CreateAccount(t, ns, "shop", "", "mx")
	acc = waitReason(t, acc, v1.ReasonSecretNotOwned)
	if msg := readyMessage(acc); !strings.Contains(msg, "spec.secretName") || !strings.Contains(msg, "shop-smtp-credentials") {
		t.Errorf("message = %q", msg)
	}
	waitEventAbout(t, acc, v1.ReasonSecretNotOwned)
	after := env.GetSecret(t, ns, "shop-smtp-credentials")
	if after.ResourceVersion != foreign.ResourceVersion || len(after.OwnerReferences) != 0 {
		t.Errorf("the foreign Secret was changed: %+v", after)
	}

	// Once it is deleted the account writes its own.
	if err := env.Client.Delete(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	acc = waitReason(t, acc, v1.ReasonReady)
	if s := env.GetSecret(t, ns, "shop-smtp-credentials"); !accountHolds(s, acc) {
		t.Error("the new Secret is not the account's")
	}
}

func TestAccountTenancy(t *testing.T) {
	platform := startAccounts(t)
	labelled := env.Namespace(t, map[string]string{"mailfleet.io/tenant": "yes"})
	other := env.Namespace(t, nil)
	selector := func(r *v1.SmtpRelay) {
		r.Spec.Accounts.Namespaces = v1.AccountNamespaces{From: v1.NamespacesFromSelector,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"mailfleet.io/tenant": "yes"}}}
	}
	all := func(r *v1.SmtpRelay) { r.Spec.Accounts.Namespaces.From = v1.NamespacesFromAll }
	env.CreateRelay(t, platform, "same")
	env.CreateRelay(t, platform, "all", all)
	env.CreateRelay(t, platform, "selector", selector)

	tests := []struct {
		name, relay, ns, want string
	}{
		{"Same admits the relay's namespace", "same", platform, v1.ReasonReady},
		{"Same refuses another namespace", "same", other, v1.ReasonNamespaceNotAllowed},
		{"All admits any namespace", "all", other, v1.ReasonReady},
		{"Selector admits a matching namespace", "selector", labelled, v1.ReasonReady},
		{"Selector refuses the relay's own unlabelled namespace", "selector", platform, v1.ReasonNamespaceNotAllowed},
		{"Selector refuses an unlabelled namespace", "selector", other, v1.ReasonNamespaceNotAllowed},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("a%d", i)
			acc := waitReason(t, env.CreateAccount(t, tt.ns, name, platform, tt.relay), tt.want)
			s, err := getSecret(context.Background(), env.Client, tt.ns, name+"-smtp-credentials")
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == v1.ReasonReady {
				if s == nil {
					t.Error("no credentials Secret")
				}
				return
			}
			if !strings.Contains(readyMessage(acc), tt.ns) {
				t.Errorf("message does not name the namespace: %q", readyMessage(acc))
			}
			if s != nil { // no access: no credentials were issued
				t.Error("a refused account got a credentials Secret")
			}
		})
	}

	t.Run("labelling the namespace admits its account", func(t *testing.T) {
		acc := &v1.SmtpAccount{ObjectMeta: metav1.ObjectMeta{Namespace: other, Name: "a5"}}
		var nsObj corev1.Namespace
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: other}, &nsObj); err != nil {
			t.Fatal(err)
		}
		if nsObj.Labels == nil {
			nsObj.Labels = map[string]string{}
		}
		nsObj.Labels["mailfleet.io/tenant"] = "yes"
		if err := env.Client.Update(context.Background(), &nsObj); err != nil {
			t.Fatal(err)
		}
		waitReason(t, acc, v1.ReasonReady)
	})
}

func TestAccountAPIUserConflict(t *testing.T) {
	ctx := context.Background()
	platform := startAccounts(t)
	nsA, nsB := env.Namespace(t, nil), env.Namespace(t, nil)
	env.CreateRelay(t, platform, "mx", func(r *v1.SmtpRelay) { r.Spec.Accounts.Namespaces.From = v1.NamespacesFromAll })
	acme := func(a *v1.SmtpAccount) { a.Spec.APIUser = "acme" }

	holder := waitReason(t, env.CreateAccount(t, nsA, "first", platform, "mx", acme), v1.ReasonReady)
	waitNextSecond(holder)
	later := waitReason(t, env.CreateAccount(t, nsB, "second", platform, "mx", acme), v1.ReasonConflict)
	// Issue 12.23: another tenant's namespace and account name stay hidden.
	if msg := readyMessage(later); strings.Contains(msg, nsA) || strings.Contains(msg, "first") || !strings.Contains(msg, "another namespace") {
		t.Errorf("conflict message across namespaces: %q, want it to say only that the apiUser is taken", msg)
	}
	waitEventAbout(t, later, v1.ReasonConflict)
	// In the holder's own namespace, the message names it.
	sibling := waitReason(t, env.CreateAccount(t, nsA, "sibling", platform, "mx", acme), v1.ReasonConflict)
	if msg := readyMessage(sibling); !strings.Contains(msg, `SmtpAccount "first"`) {
		t.Errorf("conflict message in the holder's namespace does not name it: %q", msg)
	}
	if err := env.Client.Delete(ctx, sibling); err != nil {
		t.Fatal(err)
	}
	if s, err := getSecret(ctx, env.Client, nsB, "second-smtp-credentials"); err != nil || s != nil {
		t.Errorf("the later claimant got credentials (%v)", err)
	}
	waitReason(t, holder, v1.ReasonReady) // the holder keeps working

	// Another apiUser on the same relay is no conflict.
	waitReason(t, env.CreateAccount(t, nsB, "third", platform, "mx"), v1.ReasonReady)

	if err := env.Client.Delete(ctx, holder); err != nil {
		t.Fatal(err)
	}
	waitReason(t, later, v1.ReasonReady)
}

func TestAccountRelayNotFoundAndSuspended(t *testing.T) {
	ctx := context.Background()
	ns := startAccounts(t)
	acc := waitReason(t, env.CreateAccount(t, ns, "shop", "", "mx"), v1.ReasonRelayNotFound)
	if msg := readyMessage(acc); !strings.Contains(msg, ns+"/mx") {
		t.Errorf("message does not name the relay: %q", msg)
	}
	waitEventAbout(t, acc, v1.ReasonRelayNotFound)

	// The relay appears with an endpoint and listeners of its own.
	relay := env.CreateRelay(t, ns, "mx", func(r *v1.SmtpRelay) {
		r.Spec.Listeners = []v1.RelayListener{{Name: "smtps", Port: 465, TLS: v1.ListenerImplicit}, {Name: "alt", Port: 2525}}
	})
	relay.Status.Endpoint = "smtp.internal.example"
	if err := env.Client.Status().Update(ctx, relay); err != nil {
		t.Fatal(err)
	}
	acc = waitReason(t, acc, v1.ReasonReady)
	env.WaitSecret(t, wait, ns, "shop-smtp-credentials", func(s *corev1.Secret) error {
		if string(s.Data[render.SecretKeyHost]) != "smtp.internal.example" || string(s.Data[render.SecretKeyPort]) != "2525" {
			return fmt.Errorf("host %s port %s", s.Data[render.SecretKeyHost], s.Data[render.SecretKeyPort])
		}
		return nil
	})

	env.UpdateSpec(t, acc, func() { acc.Spec.Suspended = true })
	waitReason(t, acc, v1.ReasonSuspended)
	env.GetSecret(t, ns, "shop-smtp-credentials") // kept
}

// TestAccountSecretRenamed: changing spec.secretName moves the key to the
// new Secret instead of issuing another, and removes the old Secret when
// secretRetention is Delete (TestAccountSecretRetained: kept by default).
func TestAccountSecretRenamed(t *testing.T) {
	ctx := context.Background()
	ns := startAccountsWithRelay(t)
	acc := waitReason(t, env.CreateAccount(t, ns, "shop", "", "mx", func(a *v1.SmtpAccount) {
		a.Spec.SecretRetention = v1.SecretRetentionDelete
	}), v1.ReasonReady)
	if s := env.GetSecret(t, ns, "shop-smtp-credentials"); !metav1.IsControlledBy(s, acc) {
		t.Errorf("secretRetention Delete: the Secret is not controlled by the account: %+v", s.OwnerReferences)
	}
	key := string(env.GetSecret(t, ns, "shop-smtp-credentials").Data[render.SecretKeyPassword])

	env.UpdateSpec(t, acc, func() { acc.Spec.SecretName = "mail-credentials" })
	acc = waitReason(t, acc, v1.ReasonReady)
	if acc.Status.SecretName != "mail-credentials" {
		t.Errorf("status.secretName = %q", acc.Status.SecretName)
	}
	if got := string(env.GetSecret(t, ns, "mail-credentials").Data[render.SecretKeyPassword]); got != key {
		t.Error("renaming the Secret changed the key")
	}
	envtestkit.Eventually(t, wait, func() error {
		if s, err := getSecret(ctx, env.Client, ns, "shop-smtp-credentials"); err != nil || s != nil {
			return fmt.Errorf("old Secret still there (%v)", err)
		}
		return nil
	})
}
