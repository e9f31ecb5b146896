package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
	"github.com/mailfleet/mailfleet/relay/credentials/kubesource"
	"github.com/mailfleet/mailfleet/relay/events"
	"github.com/mailfleet/mailfleet/relay/queue"
	"github.com/mailfleet/mailfleet/relay/webhook"
)

// TestWebhookDisabledFromTheRelaysBucket runs a relay's webhook dispatcher
// on a real JetStream with the relay's credentials source and its status
// report: a 410 mark in the relays' bucket (the record the dispatcher
// writes on a 410) becomes WebhookDisabled=True on the account. The way
// back, as docs/events.md gives it: the webhook taken out of spec.webhooks
// reaches the relay, whose dispatcher forgets the mark, and the condition
// goes; put back, the webhook is not disabled.
func TestWebhookDisabledFromTheRelaysBucket(t *testing.T) {
	ctx := context.Background()
	platform := env.Namespace(t, nil)
	tenant := env.Namespace(t, nil)
	startPublishing(t)
	env.CreateRelay(t, platform, "mx", func(r *v1.SmtpRelay) { r.Spec.Accounts.Namespaces.From = v1.NamespacesFromAll })
	if err := env.Client.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: wire.WebhookStatusConfigMapName("mx"), Namespace: platform,
		Labels: map[string]string{render.LabelManagedBy: render.ManagedByValue}}}); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "hooks", Namespace: tenant},
		Data: map[string][]byte{"signing-secret": []byte("whsec-0123456789abcdef")}}); err != nil {
		t.Fatal(err)
	}
	const url = "https://hooks.acme.example/gone"
	hook := v1.AccountWebhook{URL: url, SigningSecretRef: v1.WebhookSecretReference{Name: "hooks"}}
	acc := env.CreateAccount(t, tenant, "acme", platform, "mx", func(a *v1.SmtpAccount) { a.Spec.Webhooks = []v1.AccountWebhook{hook} })
	src, _ := relayCredentials(t, platform, "mx")
	kv := runDispatcher(t, src, kubesource.StatusConfigMap{Client: kubernetes.NewForConfigOrDie(env.Config), Namespace: platform, Relay: "mx"})

	mark, _ := json.Marshal(webhook.Disabled{APIUser: "acme", DisabledAt: time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC), Reason: "410 Gone"})
	if _, err := kv.Put(ctx, wire.WebhookKey("acme", url), mark); err != nil {
		t.Fatal(err)
	}
	disabled := func(want bool) func() error {
		return func() error {
			c := accountCondition(t, tenant, "acme", v1.ConditionWebhookDisabled)
			if got := c.Status == metav1.ConditionTrue && c.Reason == v1.ReasonEndpointGone; got != want {
				return fmt.Errorf("WebhookDisabled %+v, want it %v", c, want)
			}
			return nil
		}
	}
	envtestkit.Eventually(t, 20*time.Second, disabled(true))
	if c := accountCondition(t, tenant, "acme", v1.ConditionWebhookDisabled); !strings.Contains(c.Message, "webhooks[0] ("+url+") answered 410 Gone at 2026-12-05T01:00:00Z") {
		t.Fatalf("condition message %q", c.Message)
	}
	waitEventAbout(t, acc, v1.ReasonEndpointGone)

	// The way back: out of the spec, the relay forgets the mark.
	env.UpdateSpec(t, acc, func() { acc.Spec.Webhooks = nil })
	envtestkit.Eventually(t, 20*time.Second, func() error {
		if _, err := kv.Get(ctx, wire.WebhookKey("acme", url)); err == nil {
			return fmt.Errorf("the mark is still in the bucket")
		}
		return nil
	})
	envtestkit.Eventually(t, 20*time.Second, func() error {
		var cm corev1.ConfigMap
		if err := env.Get(&cm, platform, wire.WebhookStatusConfigMapName("mx")); err != nil {
			return err
		}
		if strings.Contains(cm.Data[wire.WebhookStatusDataKey], wire.WebhookKey("acme", url)) {
			return fmt.Errorf("the relays still report the mark: %s", cm.Data[wire.WebhookStatusDataKey])
		}
		return nil
	})
	env.UpdateSpec(t, acc, func() { acc.Spec.Webhooks = []v1.AccountWebhook{hook} })
	waitWebhooksCondition(t, tenant, "acme", metav1.ConditionTrue, v1.ReasonReady)
	envtestkit.Eventually(t, 20*time.Second, disabled(false))
}

// runDispatcher runs a relay's webhook dispatcher on an embedded JetStream
// with accounts from src and reports to status, until the test ends, and
// returns the relays' bucket of disabled webhooks.
func runDispatcher(t *testing.T, src webhook.Accounts, status webhook.StatusReporter) jetstream.KeyValue {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	q, err := queue.Open(ctx, queue.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	prod, err := events.Open(ctx, events.Options{Conn: q.Conn(), Stream: q.Stream()})
	if err != nil {
		t.Fatal(err)
	}
	d, err := webhook.New(ctx, webhook.Config{QueueStream: q.Stream()}, webhook.Deps{Conn: q.Conn(), Accounts: src, Status: status})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer fcancel()
		prod.Close(fctx)
		q.Close()
	})
	js, err := jetstream.New(q.Conn())
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, wire.WebhooksBucket(q.Stream()))
	if err != nil {
		t.Fatal(err)
	}
	return kv
}
