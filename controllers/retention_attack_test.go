package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// Issue 12.21: deleting an account, or renaming its Secret, deleted the
// credentials Secret, and the key with it; applications mounting it broke,
// and an account re-created by a GitOps tool got a new key. By default the
// Secret is now retained, and an account of the same name adopts it with
// its key.
func TestAccountSecretRetained(t *testing.T) {
	ctx := context.Background()
	ns := startAccountsWithRelay(t)
	acc := waitReason(t, env.CreateAccount(t, ns, "shop", "", "mx"), v1.ReasonReady)
	key := string(env.GetSecret(t, ns, "shop-smtp-credentials").Data[render.SecretKeyPassword])

	env.UpdateSpec(t, acc, func() { acc.Spec.SecretName = "mail-credentials" })
	waitReason(t, acc, v1.ReasonReady)
	if got := string(env.GetSecret(t, ns, "mail-credentials").Data[render.SecretKeyPassword]); got != key {
		t.Error("renaming the Secret changed the key")
	}
	env.GetSecret(t, ns, "shop-smtp-credentials") // retained

	if err := env.Client.Delete(ctx, acc); err != nil {
		t.Fatal(err)
	}
	kept := env.GetSecret(t, ns, "mail-credentials")
	if len(kept.OwnerReferences) != 0 {
		t.Fatalf("a retained Secret has owners the garbage collector would follow: %+v", kept.OwnerReferences)
	}
	waitReason(t, env.CreateAccount(t, ns, "shop", "", "mx", func(a *v1.SmtpAccount) { a.Spec.SecretName = "mail-credentials" }), v1.ReasonReady)
	if got := string(env.GetSecret(t, ns, "mail-credentials").Data[render.SecretKeyPassword]); got != key {
		t.Error("the account created again got a new key instead of its retained one")
	}
	// Another account cannot adopt what was retained for "shop".
	other := waitReason(t, env.CreateAccount(t, ns, "other", "", "mx", func(a *v1.SmtpAccount) { a.Spec.SecretName = "shop-smtp-credentials" }),
		v1.ReasonSecretNotOwned)
	if s := env.GetSecret(t, ns, "shop-smtp-credentials"); string(s.Data[render.SecretKeyPassword]) != key || s.Labels[render.LabelAccount] != "shop" {
		t.Errorf("account %s took over the Secret retained for shop", other.Name)
	}
}

// Issue 12.21: deleting the credentials Secret minted a new key at once,
// cutting off every sender of the old one. The lost key now stays valid
// for the rotation grace period, and no version of the shard lacks it
// in between.
func TestAccountLostSecretGrace(t *testing.T) {
	ctx := context.Background()
	env.StartManager(t, func(mgr ctrl.Manager) error {
		if err := setupCredentialControllers(mgr); err != nil {
			return err
		}
		return (&CredentialsPublisher{}).SetupWithManager(mgr)
	})
	ns := env.Namespace(t, nil)
	env.CreateRelay(t, ns, "mx")
	waitReason(t, env.CreateAccount(t, ns, "shop", "", "mx"), v1.ReasonReady)
	secret := env.GetSecret(t, ns, "shop-smtp-credentials")
	salt := render.DigestSalt(types.NamespacedName{Namespace: ns, Name: "mx"}, "shop")
	lost := wire.SaltedDigest(string(secret.Data[render.SecretKeyPassword]), salt)
	shard := wire.ShardSecretName("mx", wire.ShardOf("shop"))
	env.WaitSecret(t, wait, ns, shard, func(s *corev1.Secret) error { return shardHasDigest(s, lost) })

	versions := env.WatchShard(t, ns, shard)
	if err := env.Client.Delete(ctx, secret); err != nil {
		t.Fatal(err)
	}
	renewed := env.WaitSecret(t, wait, ns, "shop-smtp-credentials", func(s *corev1.Secret) error {
		if s.UID == secret.UID {
			return fmt.Errorf("not written again yet")
		}
		return nil
	})
	fresh := wire.SaltedDigest(string(renewed.Data[render.SecretKeyPassword]), salt)
	if string(renewed.Data[render.SecretKeyPreviousPasswordDigest]) != lost {
		t.Errorf("the new Secret does not carry the lost key's digest for the grace period")
	}
	env.WaitSecret(t, wait, ns, shard, func(s *corev1.Secret) error {
		if err := shardHasDigest(s, fresh); err != nil {
			return err
		}
		return shardHasDigest(s, lost)
	})
	for i, content := range versions() {
		if !strings.Contains(content, lost) {
			t.Fatalf("shard version %d leaves the lost key out before its grace period: %s", i+1, content)
		}
	}
}

func shardHasDigest(s *corev1.Secret, digest string) error {
	accounts, err := wire.ParseShard(s.Data[wire.ShardDataKey])
	if err != nil {
		return err
	}
	for _, a := range accounts {
		if slices.Contains(a.KeyDigests, digest) {
			return nil
		}
	}
	return fmt.Errorf("shard %s lacks digest %.8s…", s.Name, digest)
}
