package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// verifiedDomains are the domains of namespace's SmtpDomains that DNS
// verified, with the keys the relays sign with. It reads the key Secrets
// the domain controller writes in the operator's namespace, never the
// SmtpDomains' status, which a tenant may write.
func (p *CredentialsPublisher) verifiedDomains(ctx context.Context, namespace string) (map[string][]wire.DKIMKey, error) {
	out := map[string][]wire.DKIMKey{}
	if p.DomainKeyNamespace == "" {
		return out, nil
	}
	var list v1.SmtpDomainList
	if err := p.Client.List(ctx, &list, client.InNamespace(namespace)); err != nil {
		return nil, fmt.Errorf("list the SmtpDomains of %s: %w", namespace, err)
	}
	for i := range list.Items {
		d := &list.Items[i]
		s, err := p.Secrets.read(ctx, types.NamespacedName{Namespace: p.DomainKeyNamespace, Name: render.DomainKeySecretName(d.Namespace, d.Name)})
		if err != nil {
			return nil, err
		}
		if s == nil || d.DeletionTimestamp != nil {
			continue
		}
		keys := parseDomainKeys(s.Data[render.SecretKeyDKIM], d)
		if keys.Verified {
			out[keys.Domain] = append(out[keys.Domain], keys.signingKeys()...)
		}
	}
	return out, nil
}

// applyDomains decides the entry's sender domains and signing keys. Where
// the relay requires verification, an account sends only from what a
// verified domain covers: the entries of its allowedSenderDomains that are
// a verified domain or under one, or, when it lists none, every verified
// domain of its namespace and their subdomains. It signs with the keys of
// the verified domains it may send from.
func applyDomains(entry *wire.Account, acc *v1.SmtpAccount, relay *v1.SmtpRelay, verified map[string][]wire.DKIMKey) {
	listed := acc.Spec.AllowedSenderDomains
	if verificationRequired(relay) {
		entry.RestrictSenders = true
		if len(listed) == 0 {
			for _, d := range sortedKeys(verified) {
				listed = append(listed, d, "*."+d)
			}
		} else {
			listed = slices.DeleteFunc(slices.Clone(listed), func(e string) bool { return coveringDomain(e, verified) == "" })
		}
		entry.AllowedSenderDomains = listed
	}
	used := map[string]bool{}
	for _, e := range listed {
		if d := coveringDomain(e, verified); d != "" {
			used[d] = true
		}
	}
	if len(acc.Spec.AllowedSenderDomains) == 0 && !verificationRequired(relay) {
		for d := range verified {
			used[d] = true
		}
	}
	entry.DKIM = nil
	for _, d := range sortedKeys(verified) {
		if used[d] && len(entry.DKIM)+len(verified[d]) <= wire.MaxDKIMKeys {
			entry.DKIM = append(entry.DKIM, verified[d]...)
		}
	}
}

func verificationRequired(relay *v1.SmtpRelay) bool {
	return relay.Spec.SenderDomains == nil || relay.Spec.SenderDomains.Verification != v1.SenderVerificationOptional
}

// coveringDomain is the most specific verified domain that entry (a
// domain, or "*." and a domain) is or is under; "" when none.
func coveringDomain(entry string, verified map[string][]wire.DKIMKey) string {
	base := strings.TrimPrefix(wire.CanonicalDomain(entry), "*.")
	best := ""
	for d := range verified {
		if (base == d || strings.HasSuffix(base, "."+d)) && len(d) > len(best) {
			best = d
		}
	}
	return best
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
