package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
	"github.com/mailfleet/mailfleet/relay/credentials/kubesource"
)

// TestWebhooksReachTheRelay: an account's webhooks reach its relay's shard
// with the signing secrets their Secrets hold; a webhook whose Secret is
// missing, or holds a secret too short to sign with, is left out and
// reported (WebhooksReady=False, a Warning event, the secret's length and
// never the secret), while the account stays Ready and its other webhook
// is published. Rotating a signing Secret reaches the relay.
func TestWebhooksReachTheRelay(t *testing.T) {
	ctx := context.Background()
	platform := env.Namespace(t, nil)
	tenant := env.Namespace(t, nil)
	startPublishing(t)
	env.CreateRelay(t, platform, "mx", func(r *v1.SmtpRelay) { r.Spec.Accounts.Namespaces.From = v1.NamespacesFromAll })
	src, _ := relayCredentials(t, platform, "mx")
	const first, rotated, short = "whsec-0123456789abcdef-first", "whsec-0123456789abcdef-rotated", "too-short"
	signing := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "hooks", Namespace: tenant}, Data: map[string][]byte{"signing-secret": []byte(first)}}
	if err := env.Client.Create(ctx, signing); err != nil {
		t.Fatal(err)
	}
	acc := env.CreateAccount(t, tenant, "acme", platform, "mx", func(a *v1.SmtpAccount) {
		a.Spec.Webhooks = []v1.AccountWebhook{
			{URL: "https://hooks.acme.example/mail", Events: []string{"delivered", "bounced"}, SigningSecretRef: v1.WebhookSecretReference{Name: "hooks"}},
			{URL: "https://other.acme.example/mail", SigningSecretRef: v1.WebhookSecretReference{Name: "missing"}},
		}
	})
	published := func(want ...string) func() error {
		return func() error {
			a, ok := src.Lookup("acme")
			if !ok {
				return fmt.Errorf("acme not published")
			}
			var got []string
			for _, h := range a.Webhooks {
				got = append(got, h.URL+" "+strings.Join(h.Events, ",")+" "+h.Secret)
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("published webhooks %q, want %q", got, want)
			}
			return nil
		}
	}
	envtestkit.Eventually(t, 10*time.Second, published("https://hooks.acme.example/mail delivered,bounced "+first))
	cond := waitWebhooksCondition(t, tenant, "acme", metav1.ConditionFalse, v1.ReasonSigningSecretNotFound)
	if !strings.Contains(cond.Message, `webhooks[1] (https://other.acme.example/mail)`) || !strings.Contains(cond.Message, `Secret "missing"`) {
		t.Fatalf("condition message %q", cond.Message)
	}
	waitEventAbout(t, acc, v1.ReasonSigningSecretNotFound)
	if ready := accountCondition(t, tenant, "acme", v1.ConditionReady); ready.Status != metav1.ConditionTrue {
		t.Fatalf("the account is not Ready for a webhook's missing Secret: %+v", ready)
	}

	// The missing Secret appears, too short: still left out, said how.
	if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "missing", Namespace: tenant},
		Data: map[string][]byte{"signing-secret": []byte(short)}}); err != nil {
		t.Fatal(err)
	}
	cond = waitWebhooksCondition(t, tenant, "acme", metav1.ConditionFalse, v1.ReasonSigningSecretInvalid)
	if !strings.Contains(cond.Message, fmt.Sprintf("holds %d characters", len(short))) {
		t.Fatalf("condition message %q", cond.Message)
	}

	// Rotation of the first webhook's Secret reaches the relay.
	env.UpdateSpec(t, signing, func() { signing.Data["signing-secret"] = []byte(rotated) })
	envtestkit.Eventually(t, 10*time.Second, published("https://hooks.acme.example/mail delivered,bounced "+rotated))
	assertNoKeyLeak(t, tenant, first, rotated, short)
}

func accountCondition(t *testing.T, ns, name, condType string) metav1.Condition {
	t.Helper()
	var acc v1.SmtpAccount
	if err := env.Get(&acc, ns, name); err != nil {
		t.Fatal(err)
	}
	if c := meta.FindStatusCondition(acc.Status.Conditions, condType); c != nil {
		return *c
	}
	return metav1.Condition{}
}

func waitWebhooksCondition(t *testing.T, ns, name string, status metav1.ConditionStatus, reason string) metav1.Condition {
	t.Helper()
	var c metav1.Condition
	envtestkit.Eventually(t, 10*time.Second, func() error {
		c = accountCondition(t, ns, name, v1.ConditionWebhooksReady)
		if c.Status != status || c.Reason != reason {
			return fmt.Errorf("WebhooksReady %s/%s (%s), want %s/%s", c.Status, c.Reason, c.Message, status, reason)
		}
		return nil
	})
	return c
}

// TestWebhookDisabledShowsOnTheAccount: when the relays report that a
// webhook's endpoint answered 410 Gone (their status ConfigMap, written as
// kubesource.StatusConfigMap writes it), the account gets WebhookDisabled
// with a Warning event saying how to enable it again; when the report no
// longer names it, the condition goes.
func TestWebhookDisabledShowsOnTheAccount(t *testing.T) {
	ctx := context.Background()
	platform := env.Namespace(t, nil)
	tenant := env.Namespace(t, nil)
	startPublishing(t)
	env.CreateRelay(t, platform, "mx", func(r *v1.SmtpRelay) { r.Spec.Accounts.Namespaces.From = v1.NamespacesFromAll })
	if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "hooks", Namespace: tenant},
		Data: map[string][]byte{"signing-secret": []byte("whsec-0123456789abcdef")}}); err != nil {
		t.Fatal(err)
	}
	const url = "https://hooks.acme.example/gone"
	acc := env.CreateAccount(t, tenant, "acme", platform, "mx", func(a *v1.SmtpAccount) {
		a.Spec.Webhooks = []v1.AccountWebhook{{URL: url, SigningSecretRef: v1.WebhookSecretReference{Name: "hooks"}}}
	})
	waitWebhooksCondition(t, tenant, "acme", metav1.ConditionTrue, v1.ReasonReady)
	// The operator renders this ConfigMap with the relay's objects.
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: wire.WebhookStatusConfigMapName("mx"), Namespace: platform,
		Labels: map[string]string{render.LabelManagedBy: render.ManagedByValue}}}
	if err := env.Client.Create(ctx, cm); err != nil {
		t.Fatal(err)
	}
	report := kubesource.StatusConfigMap{Client: kubernetes.NewForConfigOrDie(env.Config), Namespace: platform, Relay: "mx"}
	gone := wire.WebhookStatus{Disabled: map[string]wire.DisabledWebhook{
		wire.WebhookKey("acme", url): {APIUser: "acme", DisabledAt: "2026-12-05T01:00:00Z", Reason: "410 Gone"},
	}}
	if err := report.Report(ctx, gone); err != nil {
		t.Fatal(err)
	}
	var cond metav1.Condition
	envtestkit.Eventually(t, 10*time.Second, func() error {
		cond = accountCondition(t, tenant, "acme", v1.ConditionWebhookDisabled)
		if cond.Status != metav1.ConditionTrue || cond.Reason != v1.ReasonEndpointGone {
			return fmt.Errorf("WebhookDisabled %+v", cond)
		}
		return nil
	})
	if !strings.Contains(cond.Message, "webhooks[0] ("+url+") answered 410 Gone") || !strings.Contains(cond.Message, "add it back") {
		t.Fatalf("condition message %q", cond.Message)
	}
	waitEventAbout(t, acc, v1.ReasonEndpointGone)
	if err := report.Report(ctx, wire.WebhookStatus{}); err != nil {
		t.Fatal(err)
	}
	envtestkit.Eventually(t, 10*time.Second, func() error {
		if c := accountCondition(t, tenant, "acme", v1.ConditionWebhookDisabled); c.Type != "" {
			return fmt.Errorf("WebhookDisabled still there: %+v", c)
		}
		return nil
	})
}
