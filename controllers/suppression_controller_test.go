package controllers

import (
	"context"
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
	"github.com/mailfleet/mailfleet/relay/credentials"
)

func startSuppressions(t *testing.T) {
	t.Helper()
	env.StartManager(t, withIndexes(
		(&AccountReconciler{}).SetupWithManager,
		(&LabelReconciler{}).SetupWithManager,
		(&SuppressionReconciler{}).SetupWithManager,
		(&CredentialsPublisher{MinInterval: time.Millisecond}).SetupWithManager,
	))
}

// accountWithSuppressions runs the controllers, a relay admitting every
// namespace, and account "acme" of a tenant namespace, logged in at the
// relay; it returns the tenant's namespace and the relay's verifier.
func accountWithSuppressions(t *testing.T) (string, *credentials.Verifier) {
	t.Helper()
	platform, tenant := env.Namespace(t, nil), env.Namespace(t, nil)
	startSuppressions(t)
	env.CreateRelay(t, platform, "mx", func(r *v1.SmtpRelay) { r.Spec.Accounts.Namespaces.From = v1.NamespacesFromAll })
	_, verifier := relayCredentials(t, platform, "mx")
	env.CreateAccount(t, tenant, "acme", platform, "mx")
	login(t, verifier, "acme", waitAccountKey(t, tenant, "acme-smtp-credentials"))
	return tenant, verifier
}

func createSuppression(t *testing.T, ns, name, account string, addrs []string, expires *metav1.Time) *v1.SmtpSuppression {
	t.Helper()
	s := &v1.SmtpSuppression{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1.SmtpSuppressionSpec{AccountRef: account, Addresses: addrs, Reason: "asked by phone", ExpiresAt: expires}}
	if err := env.Client.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	return s
}

func waitSuppressionReady(t *testing.T, ns, name string, want metav1.ConditionStatus, reason string) {
	t.Helper()
	envtestkit.Eventually(t, 15*time.Second, func() error {
		var s v1.SmtpSuppression
		if err := env.Get(&s, ns, name); err != nil {
			return err
		}
		c := meta.FindStatusCondition(s.Status.Conditions, v1.ConditionReady)
		if c == nil || c.Status != want || c.Reason != reason {
			return fmt.Errorf("Ready %+v, want %s/%s", c, want, reason)
		}
		return nil
	})
}

// suppressedAtRelay waits until the relay's view of apiUser's entry for
// addr is want.
func suppressedAtRelay(t *testing.T, v *credentials.Verifier, apiUser, addr string, want bool) {
	t.Helper()
	envtestkit.Eventually(t, 15*time.Second, func() error {
		if _, got := v.Suppression(apiUser, addr, time.Now()); got != want {
			return fmt.Errorf("%s suppressed for %s: %v, want %v", addr, apiUser, got, want)
		}
		return nil
	})
}

// TestSuppressionReachesTheRelay: an SmtpSuppression's addresses reach its
// account's shard (any case), with its source and reason; they leave it
// when the object is deleted or expires.
func TestSuppressionReachesTheRelay(t *testing.T) {
	tenant, verifier := accountWithSuppressions(t)

	s := createSuppression(t, tenant, "vips", "acme", []string{"CEO@example.com", "cfo@example.com"}, nil)
	waitSuppressionReady(t, tenant, "vips", metav1.ConditionTrue, v1.ReasonReady)
	suppressedAtRelay(t, verifier, "acme", "ceo@EXAMPLE.com", true)
	if e, _ := verifier.Suppression("acme", "cfo@example.com", time.Now()); e.Source != tenant+"/vips" || e.Reason != "asked by phone" {
		t.Fatalf("entry %+v", e)
	}

	soon := metav1.NewTime(time.Now().Add(3 * time.Second).Truncate(time.Second))
	createSuppression(t, tenant, "brief", "acme", []string{"brief@example.com"}, &soon)
	suppressedAtRelay(t, verifier, "acme", "brief@example.com", true)
	waitSuppressionReady(t, tenant, "brief", metav1.ConditionFalse, v1.ReasonExpired)
	suppressedAtRelay(t, verifier, "acme", "brief@example.com", false)

	if err := env.Client.Delete(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	suppressedAtRelay(t, verifier, "acme", "ceo@example.com", false)
}

// TestAttackSuppressionStaysInItsNamespace: an SmtpSuppression names its
// account by name alone and reaches only the account of that name in its
// own namespace; one in another tenant's namespace naming "acme" finds no
// account (AccountNotFound) and suppresses nothing of acme's.
func TestAttackSuppressionStaysInItsNamespace(t *testing.T) {
	_, verifier := accountWithSuppressions(t)
	attacker := env.Namespace(t, nil)
	createSuppression(t, attacker, "block-their-customers", "acme", []string{"customer@example.com"}, nil)
	waitSuppressionReady(t, attacker, "block-their-customers", metav1.ConditionFalse, v1.ReasonAccountNotFound)
	time.Sleep(time.Second)
	suppressedAtRelay(t, verifier, "acme", "customer@example.com", false)
}

// TestSuppressionCap: an account's SmtpSuppressions publish at most
// wire.MaxSuppressions addresses, the oldest objects' first; the object
// that does not fit says TooManyAddresses, and its addresses that did not
// fit are not suppressed.
func TestSuppressionCap(t *testing.T) {
	tenant, verifier := accountWithSuppressions(t)
	addrs := func(prefix string, n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("%s%d@example.com", prefix, i))
		}
		return out
	}
	createSuppression(t, tenant, "first", "acme", addrs("a", 700), nil)
	waitSuppressionReady(t, tenant, "first", metav1.ConditionTrue, v1.ReasonReady)
	time.Sleep(1100 * time.Millisecond) // a later creation second: "second" is the newer
	createSuppression(t, tenant, "second", "acme", addrs("b", 700), nil)
	waitSuppressionReady(t, tenant, "second", metav1.ConditionFalse, v1.ReasonTooManyAddresses)
	suppressedAtRelay(t, verifier, "acme", fmt.Sprintf("b%d@example.com", wire.MaxSuppressions-700-1), true)
	suppressedAtRelay(t, verifier, "acme", "b699@example.com", false)
	if n := len(verifier.Suppressions("acme", time.Now())); n != wire.MaxSuppressions {
		t.Fatalf("%d addresses published, want %d", n, wire.MaxSuppressions)
	}
}
