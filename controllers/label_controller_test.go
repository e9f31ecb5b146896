package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// labelMessage is a label's Ready condition message.
func labelMessage(l *v1.SmtpLabel) string {
	if c := meta.FindStatusCondition(l.Status.Conditions, v1.ConditionReady); c != nil {
		return c.Message
	}
	return ""
}

// secretHasLabel waits until the account Secret lists (or no longer lists)
// labelID.
func secretHasLabel(t *testing.T, ns, secret, labelID, want string) {
	t.Helper()
	env.WaitSecret(t, wait, ns, secret, func(s *corev1.Secret) error {
		got, ok := s.Data[render.SecretKeyLabelUsernamePrefix+labelID]
		switch {
		case want == "" && ok:
			return fmt.Errorf("username-%s still present", labelID)
		case want != "" && string(got) != want:
			return fmt.Errorf("username-%s = %q, want %q", labelID, got, want)
		}
		return nil
	})
}

func TestLabelLifecycle(t *testing.T) {
	ctx := context.Background()
	ns := startAccountsWithRelay(t)
	acc := waitReason(t, env.CreateAccount(t, ns, "shop", "", "mx", func(a *v1.SmtpAccount) { a.Spec.APIUser = "acme" }), v1.ReasonReady)
	const secret = "shop-smtp-credentials"

	// A label of a missing account waits for it.
	orphan := waitReason(t, env.CreateLabel(t, ns, "orphan", "later", "7"), v1.ReasonAccountNotFound)
	if msg := labelMessage(orphan); !strings.Contains(msg, `"later"`) {
		t.Errorf("message does not name the account: %q", msg)
	}
	waitEventAbout(t, orphan, v1.ReasonAccountNotFound)

	// A label of a Ready account is Ready and appears in the account's Secret.
	first := waitReason(t, env.CreateLabel(t, ns, "newsletter", "shop", "1001"), v1.ReasonReady)
	if first.Status.Username != "acme#1001" {
		t.Errorf("username = %q", first.Status.Username)
	}
	secretHasLabel(t, ns, secret, "1001", "acme#1001")

	// A second label with the same labelId is refused, naming the first.
	waitNextSecond(first)
	second := waitReason(t, env.CreateLabel(t, ns, "newsletter-copy", "shop", "1001"), v1.ReasonConflict)
	if msg := labelMessage(second); !strings.Contains(msg, `"newsletter"`) {
		t.Errorf("conflict message does not name the holder: %q", msg)
	}
	waitReason(t, first, v1.ReasonReady)

	// Suspending the holder stops its logins: its username leaves the Secret.
	env.UpdateSpec(t, first, func() { first.Spec.Suspended = true })
	waitReason(t, first, v1.ReasonSuspended)
	secretHasLabel(t, ns, secret, "1001", "")

	// Deleting the holder hands the labelId to the next label.
	if err := env.Client.Delete(ctx, first); err != nil {
		t.Fatal(err)
	}
	waitReason(t, second, v1.ReasonReady)
	secretHasLabel(t, ns, secret, "1001", "acme#1001")

	// The missing account arrives: its label becomes Ready.
	waitReason(t, env.CreateAccount(t, ns, "later", "", "mx"), v1.ReasonReady)
	waitReason(t, orphan, v1.ReasonReady)
	secretHasLabel(t, ns, "later-smtp-credentials", "7", "later#7")

	// An account that stops working takes its labels with it.
	env.UpdateSpec(t, acc, func() { acc.Spec.Suspended = true })
	second = waitReason(t, second, v1.ReasonAccountNotReady)
	if msg := labelMessage(second); !strings.Contains(msg, v1.ReasonSuspended) {
		t.Errorf("message does not carry the account's reason: %q", msg)
	}
	assertNoKeyLeak(t, ns, string(env.GetSecret(t, ns, secret).Data[render.SecretKeyPassword]))
}
