package kubesource

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/credentials"
)

// TestSecretsSourceAgainstAPIServer runs the shard watch against a real
// kube-apiserver: shards appear, change, turn invalid and vanish.
func TestSecretsSourceAgainstAPIServer(t *testing.T) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Fatal("KUBEBUILDER_ASSETS is not set: run `make test` (hack/build-envtest.sh builds the API server)")
	}
	env := &envtest.Environment{}
	cfg, err := env.Start()
	if err != nil {
		env.Stop()
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Stop() })
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for _, ns := range []string{"platform", "tenant"} {
		if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	shard := func(ns, name, relay string, accounts ...credentials.Account) *corev1.Secret {
		data, err := wire.MarshalShard(accounts)
		if err != nil {
			t.Fatal(err)
		}
		return &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{wire.ShardLabel: relay}},
			Data:       map[string][]byte{wire.ShardDataKey: data},
		}
	}
	acme := credentials.Account{APIUser: "acme", KeyDigests: []string{wire.Digest("k1")}, Labels: []credentials.Label{{ID: "1001"}}}
	beta := credentials.Account{APIUser: "beta", KeyDigests: []string{wire.Digest("k2")}}
	secrets := client.CoreV1().Secrets("platform")
	if _, err := secrets.Create(ctx, shard("platform", "mx-credentials-00", "mx", acme), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Shards of another relay, and a same-named relay's shards in another
	// namespace, are not this relay's.
	secrets.Create(ctx, shard("platform", "other-credentials-00", "other", beta), metav1.CreateOptions{})
	client.CoreV1().Secrets("tenant").Create(ctx, shard("tenant", "mx-credentials-01", "mx", beta), metav1.CreateOptions{})

	src := NewSecrets(client, "platform", "mx", slog.New(slog.NewTextHandler(io.Discard, nil)))
	go src.Run(ctx)
	waitFor(t, "initial sync", func() bool { return src.Synced() })
	if _, ok := src.Lookup("acme"); !ok {
		t.Fatal("acme missing after sync")
	}
	if _, ok := src.Lookup("beta"); ok {
		t.Fatal("beta comes from another relay's or another namespace's shard")
	}
	v := credentials.NewVerifier(src)
	if _, err := v.Authenticate("acme#1001", "k1"); err != nil {
		t.Fatalf("authenticate from a shard: %v", err)
	}

	// A change reaches the relay; measure how fast.
	start := time.Now()
	if _, err := secrets.Create(ctx, shard("platform", "mx-credentials-01", "mx", beta), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "new shard", func() bool { _, ok := src.Lookup("beta"); return ok })
	t.Logf("new account visible after %v", time.Since(start))

	suspended := acme
	suspended.Suspended = true
	s := shard("platform", "mx-credentials-00", "mx", suspended)
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "suspension", func() bool { _, err := v.Authenticate("acme", "k1"); return err != nil })

	// An invalid shard keeps the last valid content.
	gen := src.Generation()
	bad := s.DeepCopy()
	bad.Data[wire.ShardDataKey] = []byte(`{"accounts":[{"apiUser":"x"}]}`)
	if _, err := secrets.Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := secrets.Delete(ctx, "mx-credentials-01", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "deletion", func() bool { _, ok := src.Lookup("beta"); return !ok })
	if src.Generation() != gen+1 {
		t.Fatalf("generation %d, want %d: the invalid shard must not have been applied", src.Generation(), gen+1)
	}
	if a, ok := src.Lookup("acme"); !ok || !a.Suspended {
		t.Fatal("the invalid update replaced the shard's last valid content")
	}
}

// waitFor polls cond for up to ten seconds: a watch delivers within
// milliseconds, so the bound only matters on a machine under heavy load.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
	}
}
