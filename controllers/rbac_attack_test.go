package controllers

import (
	"context"
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/v1alpha1/v1alpha1test"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
	"github.com/mailfleet/mailfleet/relay/credentials/kubesource"
)

// Attack (issue 12.14): the relay's Role let its token list and watch every
// Secret in its namespace: a compromised relay pod read the platform's
// other Secrets and other relays' shards. The Role now names the relay's
// own shards, and the relay's shard watch works within it.
func TestAttackRelayTokenReadsOtherSecrets(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, nil)
	startRelayController(t)
	relay := env.CreateRelay(t, ns, "mx")
	envtestkit.Eventually(t, relayWait, func() error { return env.Get(&rbacv1.RoleBinding{}, ns, render.ServiceAccountName(relay.Name)) })

	admin := kubernetes.NewForConfigOrDie(env.Config)
	account := wire.Account{APIUser: "acme", KeyDigests: []string{wire.Digest("a-key-of-thirty-two-characters!!")}}
	data, err := wire.MarshalShard([]wire.Account{account})
	if err != nil {
		t.Fatal(err)
	}
	own := wire.ShardSecretName(relay.Name, wire.ShardOf("acme"))
	for name, labels := range map[string]map[string]string{
		own:                           {wire.ShardLabel: relay.Name},
		"database-password":           nil,
		wire.ShardSecretName("db", 0): {wire.ShardLabel: "db"},
	} {
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
			Data: map[string][]byte{wire.ShardDataKey: data}}
		if _, err := admin.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + render.ServiceAccountName(relay.Name)}
	asRelay := kubernetes.NewForConfigOrDie(cfg)
	secrets := asRelay.CoreV1().Secrets(ns)
	byName := func(name string) metav1.ListOptions {
		return metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()}
	}
	attempts := map[string]error{}
	_, attempts["get database-password"] = secrets.Get(ctx, "database-password", metav1.GetOptions{})
	_, attempts["list all secrets"] = secrets.List(ctx, metav1.ListOptions{})
	_, attempts["list by shard label"] = secrets.List(ctx, metav1.ListOptions{LabelSelector: wire.ShardLabel + "=" + relay.Name})
	_, attempts["list database-password by name"] = secrets.List(ctx, byName("database-password"))
	_, attempts["list another relay's shard"] = secrets.List(ctx, byName(wire.ShardSecretName("db", 0)))
	_, attempts["get own shard"] = secrets.Get(ctx, own, metav1.GetOptions{})
	_, attempts["list in another namespace"] = asRelay.CoreV1().Secrets("default").List(ctx, byName(own))
	// The one thing it writes: its webhook status ConfigMap, by name.
	configMaps := asRelay.CoreV1().ConfigMaps(ns)
	patch := []byte(`{"data":{"x":"y"}}`)
	_, attempts["patch its config"] = configMaps.Patch(ctx, render.ConfigMapName(relay.Name), types.MergePatchType, patch, metav1.PatchOptions{})
	_, attempts["get its webhook status"] = configMaps.Get(ctx, wire.WebhookStatusConfigMapName(relay.Name), metav1.GetOptions{})
	_, attempts["create a ConfigMap"] = configMaps.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
	for what, err := range attempts {
		if !apierrors.IsForbidden(err) {
			t.Errorf("%s as the relay: %v, want Forbidden", what, err)
		}
	}

	// What the relay does need still works: its report, its shard watch.
	envtestkit.Eventually(t, relayWait, func() error {
		return env.Get(&corev1.ConfigMap{}, ns, wire.WebhookStatusConfigMapName(relay.Name))
	})
	report := kubesource.StatusConfigMap{Client: asRelay, Namespace: ns, Relay: relay.Name}
	if err := report.Report(ctx, wire.WebhookStatus{}); err != nil {
		t.Fatalf("the relay's report of its webhooks: %v", err)
	}
	// Its shard watch, by name.
	src := runShardSource(t, asRelay, ns, relay.Name)
	envtestkit.Eventually(t, relayWait, func() error {
		if _, ok := src.Lookup("acme"); !ok || !src.Synced() {
			return errors.New("the relay's shard watch has not seen acme")
		}
		return nil
	})
}

// Attack (issue 12.14): whoever could write an SmtpRelay chose the image
// its pods run, with the relay's token and the cluster's network. Only the
// images the operator's administrator allows run now.
func TestAttackRelayImageNotAllowed(t *testing.T) {
	opts := testRenderOptions
	opts.AllowedImages = []string{"example.com/relay:v2", "registry.example/mailfleet:", "registry.example/mailfleet"}
	for _, image := range []string{
		"attacker.example/miner:latest",
		"example.com/relay:v2-evil",
		"registry.example/mailfleet-evil:1", // the entry without a separator is exact
		"registry.example/mailfleet",        // allowed exactly, so take the next
	} {
		_, err := render.Relay(v1alpha1test.Relay("mail", "mx", v1alpha1test.WithImage(image)), opts)
		if image == "registry.example/mailfleet" {
			if err != nil {
				t.Errorf("%s: %v", image, err)
			}
			continue
		}
		if !errors.Is(err, render.ErrImageNotAllowed) || !strings.Contains(err.Error(), "--relay-allowed-images") {
			t.Errorf("%s: err %v, want ImageNotAllowed saying how to allow it", image, err)
		}
	}
	ns := env.Namespace(t, nil)
	startRelayController(t)
	relay := env.CreateRelay(t, ns, "mx", v1alpha1test.WithImage("attacker.example/miner:latest"))
	env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonImageNotAllowed)
	waitRelayEvent(t, relay, corev1.EventTypeWarning, v1.ReasonImageNotAllowed)
	if err := env.Get(&appsv1.Deployment{}, ns, relay.Name); !apierrors.IsNotFound(err) {
		t.Errorf("deployment of a relay with a refused image: %v", err)
	}
}

// Attack (issue 12.23): whoever could write an SmtpRelay could have any
// ClusterIssuer sign a certificate for any name. The operator's allow
// lists now bound both; Issuers in the relay's own namespace stay allowed.
func TestAttackRelayCertificateNotAllowed(t *testing.T) {
	opts := testRenderOptions
	opts.AllowedClusterIssuers = []string{"letsencrypt"}
	opts.AllowedHostnames = []string{"*.mail.example", "smtp.example.com"}
	tests := []struct {
		name  string
		relay *v1.SmtpRelay
		ok    bool
	}{
		{"allowed ClusterIssuer and name", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithIssuer("ClusterIssuer", "letsencrypt"), v1alpha1test.WithHostname("a.mail.example")), true},
		{"namespace Issuer", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithIssuer("Issuer", "anything"), v1alpha1test.WithHostname("smtp.example.com")), true},
		{"own TLS Secret, any name", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithSecretName("own"), v1alpha1test.WithHostname("www.bank.example")), true},
		{"other ClusterIssuer", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithIssuer("ClusterIssuer", "corp-ca"), v1alpha1test.WithHostname("a.mail.example")), false},
		{"name outside the list", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithIssuer("Issuer", "ca"), v1alpha1test.WithHostname("www.bank.example")), false},
		{"the wildcard's own apex", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithIssuer("Issuer", "ca"), v1alpha1test.WithHostname("mail.example")), false},
		{"suffix without a dot", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithIssuer("Issuer", "ca"), v1alpha1test.WithHostname("evilmail.example")), false},
	}
	for _, tt := range tests {
		_, err := render.Relay(tt.relay, opts)
		if tt.ok != (err == nil) || (err != nil && !errors.Is(err, render.ErrCertificateNotAllowed)) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
	ns := env.Namespace(t, nil)
	env.StartManager(t, withIndexes((&RelayReconciler{Options: opts}).SetupWithManager))
	relay := env.CreateRelay(t, ns, "mx", v1alpha1test.WithIssuer("ClusterIssuer", "corp-ca"), v1alpha1test.WithHostname("a.mail.example"))
	env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonCertificateNotAllowed)
	waitRelayEvent(t, relay, corev1.EventTypeWarning, v1.ReasonCertificateNotAllowed)
}
