package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
)

// relayAdmitsNamespace applies a relay's spec.accounts.namespaces policy, as
// Gateway API's allowedRoutes does: Same (the default) admits the relay's own
// namespace, All every namespace, Selector the namespaces whose labels match.
// When the namespace is refused, why says so for a person.
func relayAdmitsNamespace(ctx context.Context, c client.Reader, relay *v1.SmtpRelay, namespace string) (ok bool, why string, err error) {
	policy := relay.Spec.Accounts.Namespaces
	switch policy.From {
	case v1.NamespacesFromAll:
		return true, "", nil
	case v1.NamespacesFromSelector:
		return namespaceSelected(ctx, c, relay, namespace)
	default: // Same, or not yet defaulted
		if namespace == relay.Namespace {
			return true, "", nil
		}
		return false, fmt.Sprintf("SmtpRelay %s/%s accepts accounts from its own namespace only (spec.accounts.namespaces.from: Same); ask its owner to allow namespace %q",
			relay.Namespace, relay.Name, namespace), nil
	}
}

func namespaceSelected(ctx context.Context, c client.Reader, relay *v1.SmtpRelay, namespace string) (bool, string, error) {
	sel, err := metav1.LabelSelectorAsSelector(relay.Spec.Accounts.Namespaces.Selector)
	if err != nil {
		return false, fmt.Sprintf("SmtpRelay %s/%s has an invalid spec.accounts.namespaces.selector: %v", relay.Namespace, relay.Name, err), nil
	}
	var ns corev1.Namespace
	if err := c.Get(ctx, client.ObjectKey{Name: namespace}, &ns); err != nil {
		if apierrors.IsNotFound(err) {
			return false, fmt.Sprintf("namespace %q not found", namespace), nil
		}
		return false, "", fmt.Errorf("get namespace %s: %w", namespace, err)
	}
	if !sel.Matches(labels.Set(ns.Labels)) {
		return false, fmt.Sprintf("namespace %q does not match the namespace selector of SmtpRelay %s/%s (spec.accounts.namespaces.selector: %s)",
			namespace, relay.Namespace, relay.Name, sel), nil
	}
	return true, "", nil
}

// apiUserHolder returns the account that holds apiUser on relay: the oldest
// attached claimant. The holder depends only on creation order and the
// relay's policy, never on status, so every claimant reaches the same answer
// and a later claimant can never take a name from a working account. It is
// the cache's copy, not to be changed: the publisher asks for every account
// of a shard on each rebuild.
func apiUserHolder(ctx context.Context, c client.Reader, relay *v1.SmtpRelay, apiUser string) (*v1.SmtpAccount, error) {
	var claimants v1.SmtpAccountList
	if err := c.List(ctx, &claimants, client.MatchingFields{indexAccountClaim: claimKey(relay.Namespace, relay.Name, apiUser)},
		client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list accounts claiming %q on relay %s/%s: %w", apiUser, relay.Namespace, relay.Name, err)
	}
	var holder *v1.SmtpAccount
	admitted := map[string]bool{}
	for i := range claimants.Items {
		a := &claimants.Items[i]
		if a.DeletionTimestamp != nil {
			continue
		}
		ok, seen := admitted[a.Namespace]
		if !seen {
			var err error
			if ok, _, err = relayAdmitsNamespace(ctx, c, relay, a.Namespace); err != nil {
				return nil, err
			}
			admitted[a.Namespace] = ok
		}
		if ok && (holder == nil || createdBefore(a, holder)) {
			holder = a
		}
	}
	return holder, nil
}

// createdBefore orders objects by creation time; namespace and name break
// ties (timestamps have one-second resolution) so the order is total.
func createdBefore(a, b client.Object) bool {
	ta, tb := a.GetCreationTimestamp(), b.GetCreationTimestamp()
	if !ta.Equal(&tb) {
		return ta.Before(&tb)
	}
	if a.GetNamespace() != b.GetNamespace() {
		return a.GetNamespace() < b.GetNamespace()
	}
	return a.GetName() < b.GetName()
}
