package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// verifiedDomains are the domains of namespace's SmtpDomains that DNS
// verified, with the keys the relays sign with. It reads the key Secrets
// the domain controller writes in the operator's namespace, never the
// SmtpDomains' status, which a tenant may write.
func verifiedDomains(ctx context.Context, c client.Reader, secrets *OwnedSecrets, keyNamespace, namespace string) (map[string][]wire.DKIMKey, error) {
	out := map[string][]wire.DKIMKey{}
	if keyNamespace == "" {
		return out, nil
	}
	var list v1.SmtpDomainList
	if err := c.List(ctx, &list, client.InNamespace(namespace)); err != nil {
		return nil, fmt.Errorf("list the SmtpDomains of %s: %w", namespace, err)
	}
	for i := range list.Items {
		d := &list.Items[i]
		s, err := secrets.read(ctx, types.NamespacedName{Namespace: keyNamespace, Name: render.DomainKeySecretName(d.Namespace, d.Name)})
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

// sendersOutcome is the SenderDomainsVerified condition of an account of a
// relay that requires verified sender domains.
type sendersOutcome struct {
	verified        bool
	reason, message string
}

// senderDomains says which of the account's sender domains count, so that
// a person sees why a sender is refused: the relay's 553 names no cause.
func (r *AccountReconciler) senderDomains(ctx context.Context, acc *v1.SmtpAccount, relay *v1.SmtpRelay) (*sendersOutcome, error) {
	if !verificationRequired(relay) {
		return nil, nil
	}
	verified, err := verifiedDomains(ctx, r.Client, r.Secrets, r.DomainKeyNamespace, acc.Namespace)
	if err != nil {
		return nil, err
	}
	var unverified []string
	for _, e := range acc.Spec.AllowedSenderDomains {
		if coveringDomain(e, verified) == "" {
			unverified = append(unverified, e)
		}
	}
	switch {
	case len(verified) == 0:
		return &sendersOutcome{reason: v1.ReasonSenderDomainNotVerified, message: fmt.Sprintf(
			"no SmtpDomain of namespace %s is Verified, and relay %s requires one: the account may send from no domain until one is (docs/deliverability.md)", acc.Namespace, relay.Name)}, nil
	case len(unverified) > 0:
		return &sendersOutcome{reason: v1.ReasonSenderDomainNotVerified, message: fmt.Sprintf(
			"allowedSenderDomains %s: no Verified SmtpDomain of namespace %s covers them, and relay %s refuses them until one does", strings.Join(unverified, ", "), acc.Namespace, relay.Name)}, nil
	}
	return &sendersOutcome{verified: true, reason: v1.ReasonVerified, message: "every sender domain of the account is verified: " + strings.Join(sortedKeys(verified), ", ")}, nil
}

// setSenderDomainsVerified writes the condition (or removes it where the
// relay does not require verification), with a Warning when it turns.
func setSenderDomainsVerified(rec events.EventRecorder, acc *v1.SmtpAccount, conds *[]metav1.Condition, out *sendersOutcome) {
	if out == nil {
		meta.RemoveStatusCondition(conds, v1.ConditionSenderDomainsVerified)
		return
	}
	before := meta.FindStatusCondition(*conds, v1.ConditionSenderDomainsVerified)
	status := metav1.ConditionTrue
	if !out.verified {
		status = metav1.ConditionFalse
		if before == nil || before.Message != out.message {
			rec.Eventf(acc, nil, corev1.EventTypeWarning, out.reason, "Reconcile", "%s", out.message)
		}
	}
	meta.SetStatusCondition(conds, metav1.Condition{Type: v1.ConditionSenderDomainsVerified, Status: status,
		ObservedGeneration: acc.Generation, Reason: out.reason, Message: out.message})
}
