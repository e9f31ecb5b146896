package controllers

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/v1alpha1/v1alpha1test"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
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
