package controllers

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"sigs.k8s.io/yaml"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/relay/config"
)

// Attack (issue 12.12): an SmtpRelay naming another relay's stream in
// spec.queue.nats.stream read that relay's queue. The second claimant now
// stops at StreamConflict, without naming the holder, and renders nothing.
func TestAttackStreamTakenByAnotherRelay(t *testing.T) {
	prefix := "s" + rand.String(6)
	nsA, nsB := env.CreateNamespace(t, prefix+"-a", nil), env.CreateNamespace(t, prefix, nil)
	startRelayController(t)
	first := env.CreateRelay(t, nsA, "mx")
	second := env.CreateRelay(t, nsB, "a-mx")
	gotFirst := env.WaitRelayReady(t, relayWait, first, metav1.ConditionFalse, v1.ReasonIssuerNotFound)
	gotSecond := env.WaitRelayReady(t, relayWait, second, metav1.ConditionFalse, v1.ReasonIssuerNotFound)
	if gotFirst.Status.Stream == gotSecond.Status.Stream {
		t.Fatalf("%s/mx and %s/a-mx share stream %s", nsA, nsB, gotFirst.Status.Stream)
	}
	if s := renderedConfig(t, nsB, "a-mx").Queue.NATS.Stream; s != gotSecond.Status.Stream {
		t.Fatalf("rendered stream %q, status says %q", s, gotSecond.Status.Stream)
	}

	nsC := env.Namespace(t, nil)
	thief := env.CreateRelay(t, nsC, "mx", func(r *v1.SmtpRelay) { r.Spec.Queue.NATS.Stream = gotFirst.Status.Stream })
	got := env.WaitRelayReady(t, relayWait, thief, metav1.ConditionFalse, v1.ReasonStreamConflict)
	msg := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady).Message
	if strings.Contains(msg, nsA) || !strings.Contains(msg, "spec.queue.nats.stream") {
		t.Errorf("message %q: want no other relay named, and what to change", msg)
	}
	waitRelayEvent(t, thief, corev1.EventTypeWarning, v1.ReasonStreamConflict)
	if got.Status.Stream != "" {
		t.Errorf("the thief recorded stream %q", got.Status.Stream)
	}
	if err := env.Get(&corev1.ConfigMap{}, nsC, render.ConfigMapName(thief.Name)); err == nil {
		t.Error("the thief's config was rendered")
	}
	// The holder is not disturbed by a newer claimant.
	env.WaitRelayReady(t, relayWait, first, metav1.ConditionFalse, v1.ReasonIssuerNotFound)
}

// A relay whose pods an earlier operator configured keeps the stream in
// that config, though the default naming changed: its queued mail is there.
func TestRelayKeepsRenderedStream(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, nil)
	relay := env.CreateRelay(t, ns, "a-b")
	legacy := config.Config{Queue: config.Queue{NATS: &config.NATSQueue{URL: "nats://nats:4222", Stream: "MAILFLEET_" + strings.ToUpper(ns) + "_A_B"}}}
	data, err := yaml.Marshal(legacy)
	if err != nil {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: render.ConfigMapName(relay.Name), Namespace: ns,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(relay, v1.GroupVersion.WithKind("SmtpRelay"))}},
		Data: map[string]string{render.ConfigKey: string(data)},
	}
	if err := env.Client.Create(ctx, cm); err != nil {
		t.Fatal(err)
	}
	startRelayController(t)
	got := env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonIssuerNotFound)
	if got.Status.Stream != legacy.Queue.NATS.Stream {
		t.Fatalf("status.stream %q, want the rendered %q", got.Status.Stream, legacy.Queue.NATS.Stream)
	}
	if s := renderedConfig(t, ns, relay.Name).Queue.NATS.Stream; s != legacy.Queue.NATS.Stream {
		t.Fatalf("re-rendered stream %q, want %q", s, legacy.Queue.NATS.Stream)
	}
}

func renderedConfig(t *testing.T, ns, relay string) config.Config {
	t.Helper()
	cm := &corev1.ConfigMap{}
	if err := env.Get(cm, ns, render.ConfigMapName(relay)); err != nil {
		t.Fatal(err)
	}
	var c config.Config
	if err := yaml.Unmarshal([]byte(cm.Data[render.ConfigKey]), &c); err != nil {
		t.Fatal(err)
	}
	return c
}
