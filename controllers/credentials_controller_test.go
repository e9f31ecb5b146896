package controllers

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/credentials/kubesource"
)

// TestCredentialsReachTheRelay runs the account, label and publisher
// controllers against the API server and the relay's own credentials source
// (the Secrets watch a relay pod runs), and checks that a new account, a
// label, a suspension and a deletion each reach the relay. It logs how long
// each took; the 2 s target at scale is measured by hack/bench/operatorscale.
func TestCredentialsReachTheRelay(t *testing.T) {
	ctx := context.Background()
	platform := env.Namespace(t, nil)
	tenant := env.Namespace(t, nil)
	startPublishing(t)
	env.CreateRelay(t, platform, "mx", func(r *v1.SmtpRelay) {
		r.Spec.Accounts.Namespaces.From = v1.NamespacesFromAll
		r.Spec.DefaultBudgetPerMinute = 500
		// The account's domains as written (TestDomainVerifiedWhenRecordsAppear
		// checks what Required makes of them).
		r.Spec.SenderDomains = &v1.RelaySenderDomains{Verification: v1.SenderVerificationOptional}
	})
	src, verifier := relayCredentials(t, platform, "mx")

	start := time.Now()
	env.CreateAccount(t, tenant, "acme", platform, "mx", func(a *v1.SmtpAccount) {
		a.Spec.BudgetPerMinute = ptr.To[int32](42)
		a.Spec.Limits = &v1.AccountLimits{MaxRecipients: ptr.To[int32](7)}
		a.Spec.SenderPolicy = wire.SenderPolicyEnvelope
		a.Spec.AllowedSenderDomains = []string{"acme.example"}
	})
	key := waitForKey(t, tenant, "acme-smtp-credentials")
	envtestkit.Eventually(t, 10*time.Second, func() error {
		_, err := verifier.Authenticate("acme", key)
		return err
	})
	t.Logf("new account usable at the relay after %v", time.Since(start))
	id, _ := verifier.Authenticate("acme", key)
	if id.BudgetPerMinute != 42 || id.MaxRecipients != 7 || id.CheckHeaderFrom || len(id.AllowedSenderDomains) != 1 {
		t.Fatalf("published identity %+v", id)
	}
	if _, err := verifier.Authenticate("acme", "wrong"); err == nil {
		t.Fatal("a wrong key authenticates")
	}

	start = time.Now()
	label := &v1.SmtpLabel{
		ObjectMeta: metav1.ObjectMeta{Name: "news", Namespace: tenant},
		Spec:       v1.SmtpLabelSpec{AccountRef: "acme", LabelID: "1001"},
	}
	if err := env.Client.Create(ctx, label); err != nil {
		t.Fatal(err)
	}
	envtestkit.Eventually(t, 10*time.Second, func() error {
		_, err := verifier.Authenticate("acme#1001", key)
		return err
	})
	t.Logf("new label usable after %v", time.Since(start))

	start = time.Now()
	env.SetSuspended(t, tenant, "acme", true)
	envtestkit.Eventually(t, 10*time.Second, func() error {
		if _, err := verifier.Authenticate("acme", key); err == nil {
			return errStill("suspended account still authenticates")
		}
		return nil
	})
	t.Logf("suspension effective after %v", time.Since(start))

	env.SetSuspended(t, tenant, "acme", false)
	envtestkit.Eventually(t, 10*time.Second, func() error {
		_, err := verifier.Authenticate("acme", key)
		return err
	})
	start = time.Now()
	if err := env.Client.Delete(ctx, &v1.SmtpAccount{ObjectMeta: metav1.ObjectMeta{Name: "acme", Namespace: tenant}}); err != nil {
		t.Fatal(err)
	}
	envtestkit.Eventually(t, 10*time.Second, func() error {
		if _, ok := src.Lookup("acme"); ok {
			return errStill("deleted account still published")
		}
		return nil
	})
	t.Logf("deletion effective after %v", time.Since(start))

	// The shards hold digests, never the key.
	var shards corev1.SecretList
	if err := env.Client.List(ctx, &shards); err != nil {
		t.Fatal(err)
	}
	for _, s := range shards.Items {
		if s.Namespace == platform && string(s.Data[wire.ShardDataKey]) != "" {
			if bytes.Contains(s.Data[wire.ShardDataKey], []byte(key)) {
				t.Fatalf("shard %s holds a key", s.Name)
			}
		}
	}
}

func waitForKey(t *testing.T, ns, name string) string {
	t.Helper()
	var key string
	envtestkit.Eventually(t, 10*time.Second, func() error {
		var s corev1.Secret
		if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, &s); err != nil {
			return err
		}
		key = string(s.Data[render.SecretKeyPassword])
		if key == "" {
			return errStill("no key yet")
		}
		return nil
	})
	return key
}

type errStill string

func (e errStill) Error() string { return string(e) }

// startPublishing runs the account, label and publisher controllers.
func startPublishing(t *testing.T) {
	t.Helper()
	env.StartManager(t, withIndexes(
		(&AccountReconciler{}).SetupWithManager,
		(&LabelReconciler{}).SetupWithManager,
		(&CredentialsPublisher{}).SetupWithManager,
	))
}

// relayCredentials runs the Secrets source a pod of relay runs, and a
// verifier on it, until the test ends.
func relayCredentials(t *testing.T, ns, relay string) (*kubesource.Secrets, *credentials.Verifier) {
	t.Helper()
	src := runShardSource(t, kubernetes.NewForConfigOrDie(env.Config), ns, relay)
	return src, credentials.NewVerifier(src)
}

// runShardSource runs the relay's watch of its credentials shards in ns
// through cs (the admin, or a client acting as the relay) until the test
// ends.
func runShardSource(t *testing.T, cs kubernetes.Interface, ns, relay string) *kubesource.Secrets {
	t.Helper()
	src := kubesource.NewSecrets(cs, ns, relay, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); src.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return src
}

// TestCredentialsFollowTheAPIUserHolder: a shard is rebuilt from the
// accounts that changed (credentials_build.go), and an account's rivals
// for its apiUser are decided again with it. When the holder of an apiUser
// goes, the account next in line is published with its own key, and the
// holder's key stops working, though nothing of the rival but its status
// changed.
func TestCredentialsFollowTheAPIUserHolder(t *testing.T) {
	ctx := context.Background()
	platform := env.Namespace(t, nil)
	nsA, nsB := env.Namespace(t, nil), env.Namespace(t, nil)
	startPublishing(t)
	env.CreateRelay(t, platform, "mx", func(r *v1.SmtpRelay) { r.Spec.Accounts.Namespaces.From = v1.NamespacesFromAll })
	_, verifier := relayCredentials(t, platform, "mx")
	shared := func(a *v1.SmtpAccount) { a.Spec.APIUser = "shared" }

	holder := waitReason(t, env.CreateAccount(t, nsA, "first", platform, "mx", shared), v1.ReasonReady)
	firstKey := waitForKey(t, nsA, "first-smtp-credentials")
	envtestkit.Eventually(t, 10*time.Second, func() error {
		_, err := verifier.Authenticate("shared", firstKey)
		return err
	})
	waitNextSecond(holder)
	later := waitReason(t, env.CreateAccount(t, nsB, "second", platform, "mx", shared), v1.ReasonConflict)
	// Other accounts of the shard change meanwhile: rebuilds from changes.
	for _, name := range []string{"a1", "a2", "a3"} {
		env.CreateAccount(t, nsB, name, platform, "mx")
	}

	if err := env.Client.Delete(ctx, holder); err != nil {
		t.Fatal(err)
	}
	waitReason(t, later, v1.ReasonReady)
	secondKey := waitForKey(t, nsB, "second-smtp-credentials")
	envtestkit.Eventually(t, 10*time.Second, func() error {
		if _, err := verifier.Authenticate("shared", secondKey); err != nil {
			return err
		}
		if _, err := verifier.Authenticate("shared", firstKey); err == nil {
			return errStill("the deleted holder's key still authenticates")
		}
		return nil
	})
}

// TestCredentialsLeaveWithTheirNamespace: when a namespace stops matching
// a relay's namespace selector, its accounts' keys stop working on the
// relay, announced by the namespace's own change: the publisher does not
// wait for the account controller (stopped here) to write their status.
func TestCredentialsLeaveWithTheirNamespace(t *testing.T) {
	ctx := context.Background()
	platform := env.Namespace(t, nil)
	tenantLabel := map[string]string{"mailfleet.io/tenant": "yes"}
	tenant := env.Namespace(t, tenantLabel)
	_, stopAccounts := env.RunManager(t, withIndexes(
		(&AccountReconciler{}).SetupWithManager,
		(&LabelReconciler{}).SetupWithManager,
		(&CredentialsPublisher{}).SetupWithManager,
	))
	env.CreateRelay(t, platform, "mx", func(r *v1.SmtpRelay) {
		r.Spec.Accounts.Namespaces = v1.AccountNamespaces{From: v1.NamespacesFromSelector,
			Selector: &metav1.LabelSelector{MatchLabels: tenantLabel}}
	})
	_, verifier := relayCredentials(t, platform, "mx")
	waitReason(t, env.CreateAccount(t, tenant, "shop", platform, "mx"), v1.ReasonReady)
	key := waitForKey(t, tenant, "shop-smtp-credentials")
	stopAccounts()

	// Only the publisher (and the labels' controller) from here on. A
	// label that reaches the relay shows that this publisher has rebuilt
	// the shard since it started.
	env.StartManager(t, withIndexes((&LabelReconciler{}).SetupWithManager, (&CredentialsPublisher{}).SetupWithManager))
	env.CreateLabel(t, tenant, "news", "shop", "1001")
	envtestkit.Eventually(t, 10*time.Second, func() error {
		_, err := verifier.Authenticate("shop#1001", key)
		return err
	})

	var ns corev1.Namespace
	if err := env.Client.Get(ctx, types.NamespacedName{Name: tenant}, &ns); err != nil {
		t.Fatal(err)
	}
	delete(ns.Labels, "mailfleet.io/tenant")
	if err := env.Client.Update(ctx, &ns); err != nil {
		t.Fatal(err)
	}
	envtestkit.Eventually(t, 10*time.Second, func() error {
		if _, err := verifier.Authenticate("shop", key); err == nil {
			return errStill("the key of an account whose namespace left the selector still authenticates")
		}
		return nil
	})
}
