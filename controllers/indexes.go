package controllers

import (
	"context"
	"fmt"
	"slices"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// IndexFields registers every field index the controllers look objects up
// by, once per manager: Setup calls it before any controller, and a test
// that runs one controller alone calls it too. The indexes turn "which
// objects does this change concern" into a lookup, which matters at 10,000
// accounts.
func IndexFields(ctx context.Context, mgr manager.Manager) error {
	indexes := []struct {
		obj  client.Object
		name string
		fn   client.IndexerFunc
	}{
		{&v1.SmtpAccount{}, indexAccountClaim, account(func(a *v1.SmtpAccount) []string {
			r := accountRelay(a)
			return []string{claimKey(r.Namespace, r.Name, render.APIUser(a))}
		})},
		{&v1.SmtpAccount{}, indexAccountRelay, account(func(a *v1.SmtpAccount) []string {
			r := accountRelay(a)
			return []string{relayKey(r.Namespace, r.Name)}
		})},
		{&v1.SmtpAccount{}, indexAccountSecret, account(accountSecretNames)},
		// The account's apiUser is immutable, so its shard is too.
		{&v1.SmtpAccount{}, indexAccountShard, account(func(a *v1.SmtpAccount) []string {
			r := accountRelay(a)
			return []string{shardKey(r.Namespace, r.Name, wire.ShardOf(render.APIUser(a)))}
		})},
		{&v1.SmtpLabel{}, indexLabelAccount, func(o client.Object) []string {
			return []string{o.(*v1.SmtpLabel).Spec.AccountRef}
		}},
		{&v1.SmtpSuppression{}, indexSuppressionAccount, func(o client.Object) []string {
			return []string{o.(*v1.SmtpSuppression).Spec.AccountRef}
		}},
		{&v1.SmtpRelay{}, relayIssuerIndex, indexRelayIssuer},
		{&v1.SmtpRelay{}, relaySecretIndex, indexRelaySecret},
	}
	for _, idx := range indexes {
		if err := mgr.GetFieldIndexer().IndexField(ctx, idx.obj, idx.name, idx.fn); err != nil {
			return fmt.Errorf("index %T by %s: %w", idx.obj, idx.name, err)
		}
	}
	return nil
}

// account adapts an index function of accounts to client.IndexerFunc.
func account(fn func(*v1.SmtpAccount) []string) client.IndexerFunc {
	return func(o client.Object) []string { return fn(o.(*v1.SmtpAccount)) }
}

// accountSecretNames are the Secrets an account reads or writes in its
// namespace that its spec names: spec.secretName and spec.key.secretRef.
// A credentials Secret of the default name is not indexed: its name says
// whose it is (accountsUsingSecret). Most accounts name none, and an index
// value of its own per account is about 0.6 KiB of heap (a set for the
// namespace and one for the cluster), some 6 MiB at 10,000 accounts.
func accountSecretNames(a *v1.SmtpAccount) []string {
	var names []string
	if a.Spec.SecretName != "" {
		names = append(names, a.Spec.SecretName)
	}
	if ref := a.Spec.Key.SecretRef; ref != nil && ref.Name != a.Spec.SecretName {
		names = append(names, ref.Name)
	}
	for _, h := range a.Spec.Webhooks {
		if !slices.Contains(names, h.SigningSecretRef.Name) {
			names = append(names, h.SigningSecretRef.Name)
		}
	}
	return names
}

// indexRelayIssuer keys a relay by the cert-manager issuer it names:
// "Issuer/<name>" (looked up in the relay's namespace) or
// "ClusterIssuer/<name>".
func indexRelayIssuer(obj client.Object) []string {
	ref := obj.(*v1.SmtpRelay).Spec.TLS.IssuerRef
	if ref == nil || render.IssuerRefGroup(ref) != render.CertManagerGroup {
		return nil
	}
	return []string{render.IssuerRefKind(ref) + "/" + ref.Name}
}

func indexRelaySecret(obj client.Object) []string {
	relay := obj.(*v1.SmtpRelay)
	var names []string
	if name := relay.Spec.TLS.SecretName; name != "" {
		names = append(names, name)
	}
	for _, ref := range render.ReferencedSecrets(relay) {
		names = append(names, ref.Name)
	}
	return names
}
