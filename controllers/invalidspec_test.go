package controllers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/v1alpha1/v1alpha1test"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

// Issue 12.11: an account the relay cannot parse used to make its whole
// credentials shard fail. The CRD now refuses what the relay refuses, so
// such an account can only come from an older, laxer CRD: this API server
// serves the SmtpAccount CRD without its sender-domain pattern. The bad
// account stops at InvalidSpec, saying what is wrong, and its shard still
// publishes its neighbour.
func TestAccountInvalidSpecLeftOut(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	crds := envtestkit.MailfleetCRDs()
	entries, err := os.ReadDir(crds)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(crds, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(e.Name(), "smtpaccounts") {
			data = dropDomainPattern(t, data)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	certManager, err := envtestkit.CertManagerCRDs()
	if err != nil {
		t.Fatal(err)
	}
	cfg, c := envtestkit.StartAPIServer(t, Scheme(), dir, certManager)
	env.RunManagerAs(t, cfg, func(mgr ctrl.Manager) error {
		if err := setupCredentialControllers(mgr); err != nil {
			return err
		}
		return (&CredentialsPublisher{}).SetupWithManager(mgr)
	})
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mail"}}); err != nil {
		t.Fatal(err)
	}
	relay := v1alpha1test.Relay("mail", "mx")
	// Both api_users fall in one shard, so the neighbour shows the shard
	// was still written.
	bad, good := sameShardUsers()
	accounts := []*v1.SmtpAccount{
		{ObjectMeta: metav1.ObjectMeta{Name: "bad", Namespace: "mail"},
			Spec: v1.SmtpAccountSpec{APIUser: bad, RelayRef: v1.RelayReference{Name: "mx"}, AllowedSenderDomains: []string{"under_score.example"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "good", Namespace: "mail"},
			Spec: v1.SmtpAccountSpec{APIUser: good, RelayRef: v1.RelayReference{Name: "mx"}}},
	}
	for _, obj := range []client.Object{relay, accounts[0], accounts[1]} {
		if err := c.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	envtestkit.Eventually(t, relayWait, func() error {
		var acc v1.SmtpAccount
		if err := c.Get(ctx, client.ObjectKey{Namespace: "mail", Name: "bad"}, &acc); err != nil {
			return err
		}
		cond := meta.FindStatusCondition(acc.Status.Conditions, v1.ConditionReady)
		if cond == nil || cond.Reason != v1.ReasonInvalidSpec || !strings.Contains(cond.Message, "allowedSenderDomains[0]") {
			return fmt.Errorf("bad account: %+v", cond)
		}
		return nil
	})
	envtestkit.Eventually(t, relayWait, func() error {
		var shard corev1.Secret
		if err := c.Get(ctx, client.ObjectKey{Namespace: "mail", Name: wire.ShardSecretName("mx", wire.ShardOf(good))}, &shard); err != nil {
			return err
		}
		published, err := wire.ParseShard(shard.Data[wire.ShardDataKey])
		if err != nil {
			return err
		}
		if len(published) != 1 || published[0].APIUser != good {
			return fmt.Errorf("shard holds %+v, want %s alone", published, good)
		}
		return nil
	})
}

// sameShardUsers returns two api_users of one shard.
func sameShardUsers() (string, string) {
	first := "bad-0"
	for i := 1; ; i++ {
		if other := fmt.Sprintf("good-%d", i); wire.ShardOf(other) == wire.ShardOf(first) {
			return first, other
		}
	}
}

// dropDomainPattern removes the allowedSenderDomains item pattern from the
// SmtpAccount CRD, as a CRD of an older release might have lacked it.
func dropDomainPattern(t *testing.T, crd []byte) []byte {
	t.Helper()
	lines := strings.Split(string(crd), "\n")
	out := lines[:0]
	in := false
	for _, l := range lines {
		trimmed := strings.TrimSpace(l)
		if strings.HasPrefix(trimmed, "allowedSenderDomains:") {
			in = true
		}
		if in && strings.HasPrefix(trimmed, "pattern:") {
			in = false
			continue
		}
		out = append(out, l)
	}
	if len(out) == len(lines) {
		t.Fatal("no allowedSenderDomains pattern found in the SmtpAccount CRD")
	}
	return []byte(strings.Join(out, "\n"))
}
