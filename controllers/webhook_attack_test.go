package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/v1alpha1/v1alpha1test"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

// TestAttackWebhookCannotUnpublishItsAccount: the relay refuses a shard
// entry with a webhook it cannot post to, and the publisher then leaves
// the whole account out: its mail would stop for a webhook. An account
// admitted by a laxer CRD (or changed since the account controller last
// checked it) with a URL without a host, a URL twice, an unknown event
// type or a webhook without a secret keeps its entry; only the bad
// webhooks are left out.
func TestAttackWebhookCannotUnpublishItsAccount(t *testing.T) {
	const secret = "whsec-0123456789abcdef"
	relay := v1alpha1test.Relay("mail", "mx")
	ref := v1.WebhookSecretReference{Name: "hooks"}
	acc := &v1.SmtpAccount{ObjectMeta: metav1.ObjectMeta{Name: "acme", Namespace: "shop"}, Spec: v1.SmtpAccountSpec{
		RelayRef: v1.RelayReference{Name: "mx", Namespace: "mail"},
		Webhooks: []v1.AccountWebhook{
			{URL: "https:///no-host", SigningSecretRef: ref},
			{URL: "https://hooks.acme.example/ok", SigningSecretRef: ref},
			{URL: "https://hooks.acme.example/ok", SigningSecretRef: ref},
			{URL: "https://hooks.acme.example/opened", Events: []string{"opened"}, SigningSecretRef: ref},
			{URL: "https://hooks.acme.example/no-secret", SigningSecretRef: ref},
		},
	}}
	secrets := map[string]string{
		"https:///no-host": secret, "https://hooks.acme.example/ok": secret, "https://hooks.acme.example/opened": secret,
	}
	entry := render.ShardEntry(acc, relay, []string{wire.Digest("0123456789abcdef0123456789abcdef")}, nil)
	entry.Webhooks = accountWebhooks(acc, secrets)
	if len(entry.Webhooks) != 1 || entry.Webhooks[0].URL != "https://hooks.acme.example/ok" {
		t.Fatalf("published webhooks %+v, want only https://hooks.acme.example/ok", entry.Webhooks)
	}
	if err := wire.CheckAccount(entry); err != nil {
		t.Fatalf("the relay would refuse the account, and the publisher leave it out: %v", err)
	}
}

// TestAttackSigningSecretsStayTheTenants: a tenant names its signing
// Secret by name alone, and the operator looks for it in the account's
// namespace only. An account that names a Secret which exists only in
// another namespace gets SigningSecretNotFound, and one that names an
// operator-written Secret of its own namespace (another account's
// credentials: its key) gets SigningSecretNotAllowed. Neither Secret's
// value reaches the shard, the account's credentials Secret, its status or
// its events.
func TestAttackSigningSecretsStayTheTenants(t *testing.T) {
	ctx := context.Background()
	platform := env.Namespace(t, nil)
	tenant := env.Namespace(t, nil)
	victim := env.Namespace(t, nil)
	startPublishing(t)
	env.CreateRelay(t, platform, "mx", func(r *v1.SmtpRelay) { r.Spec.Accounts.Namespaces.From = v1.NamespacesFromAll })
	src, _ := relayCredentials(t, platform, "mx")
	const victimSecret = "whsec-the-victim-namespace-secret"
	if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "hooks", Namespace: victim},
		Data: map[string][]byte{"signing-secret": []byte(victimSecret)}}); err != nil {
		t.Fatal(err)
	}
	env.CreateAccount(t, tenant, "beta", platform, "mx")
	betaKey := waitAccountKey(t, tenant, "beta-smtp-credentials")
	acc := env.CreateAccount(t, tenant, "acme", platform, "mx", func(a *v1.SmtpAccount) {
		a.Spec.Webhooks = []v1.AccountWebhook{
			{URL: "https://hooks.acme.example/a", SigningSecretRef: v1.WebhookSecretReference{Name: "hooks"}},
			{URL: "https://hooks.acme.example/b", SigningSecretRef: v1.WebhookSecretReference{Name: "beta-smtp-credentials", Key: render.SecretKeyPassword}},
		}
	})
	cond := waitWebhooksCondition(t, tenant, "acme", metav1.ConditionFalse, v1.ReasonSigningSecretNotAllowed)
	if !strings.Contains(cond.Message, `webhooks[0] (https://hooks.acme.example/a) is not published: Secret "hooks" (signingSecretRef.name) does not exist in namespace "`+tenant+`"`) ||
		!strings.Contains(cond.Message, `webhooks[1] (https://hooks.acme.example/b) is not published: Secret "beta-smtp-credentials" is written by the mailfleet operator`) {
		t.Fatalf("condition message %q", cond.Message)
	}
	waitEventAbout(t, acc, v1.ReasonSigningSecretNotAllowed)
	envtestkit.Eventually(t, 10*time.Second, func() error {
		a, ok := src.Lookup("acme")
		if !ok {
			return fmt.Errorf("acme not published")
		}
		if len(a.Webhooks) != 0 {
			return fmt.Errorf("published webhooks %+v, want none", a.Webhooks)
		}
		return nil
	})
	var creds corev1.Secret
	if err := env.Get(&creds, tenant, "acme-smtp-credentials"); err != nil {
		t.Fatal(err)
	}
	for k, v := range creds.Data {
		if strings.Contains(string(v), victimSecret) || strings.Contains(string(v), betaKey) {
			t.Fatalf("another Secret's value is in acme's credentials Secret, key %q", k)
		}
	}
	assertNoKeyLeak(t, tenant, victimSecret, betaKey)
}

// waitAccountKey is the key the operator wrote into an account's
// credentials Secret.
func waitAccountKey(t *testing.T, ns, secret string) string {
	t.Helper()
	var key string
	envtestkit.Eventually(t, 10*time.Second, func() error {
		var s corev1.Secret
		if err := env.Get(&s, ns, secret); err != nil {
			return err
		}
		if key = string(s.Data[render.SecretKeyPassword]); key == "" {
			return fmt.Errorf("no key in Secret %s/%s yet", ns, secret)
		}
		return nil
	})
	return key
}
