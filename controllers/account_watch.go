package controllers

import (
	"context"
	"maps"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// Field indexes over the manager's cache. They turn "which accounts does
// this change concern" into a lookup, which matters at 10,000 accounts.
const (
	// indexAccountClaim: "<relay namespace>/<relay name>/<apiUser>".
	indexAccountClaim = "mailfleet.io/account-claim"
	// indexAccountRelay: "<relay namespace>/<relay name>".
	indexAccountRelay = "mailfleet.io/account-relay"
	// indexAccountSecret: names of the Secrets an account's spec names
	// (spec.key.secretRef.name, spec.secretName), in its namespace.
	indexAccountSecret = "mailfleet.io/account-secret"
)

func claimKey(relayNamespace, relayName, apiUser string) string {
	return relayNamespace + "/" + relayName + "/" + apiUser
}

func relayKey(namespace, name string) string { return namespace + "/" + name }

// accountRelay is the account's relay, its namespace defaulted.
func accountRelay(acc *v1.SmtpAccount) types.NamespacedName {
	ns := acc.Spec.RelayRef.Namespace
	if ns == "" {
		ns = acc.Namespace
	}
	return types.NamespacedName{Namespace: ns, Name: acc.Spec.RelayRef.Name}
}

// requestsFor lists accounts matching opts and turns them into requests.
// Only their names are read, so the cache's copies are not copied.
func requestsFor(ctx context.Context, c client.Reader, opts ...client.ListOption) []reconcile.Request {
	var list v1.SmtpAccountList
	if err := c.List(ctx, &list, append(opts, client.UnsafeDisableDeepCopy)...); err != nil {
		log.FromContext(ctx).Error(err, "list accounts to enqueue")
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for _, a := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&a)})
	}
	return reqs
}

// claimantsOf enqueues every account claiming the same apiUser on the same
// relay, so a Conflict clears when its holder goes away or moves.
func (r *AccountReconciler) claimantsOf(ctx context.Context, o client.Object) []reconcile.Request {
	acc := o.(*v1.SmtpAccount)
	rel := accountRelay(acc)
	return requestsFor(ctx, r.Client, client.MatchingFields{indexAccountClaim: claimKey(rel.Namespace, rel.Name, render.APIUser(acc))})
}

// accountsOfRelay enqueues the accounts attached to a relay: its endpoint,
// listeners and namespace policy are in their Secrets and conditions.
func (r *AccountReconciler) accountsOfRelay(ctx context.Context, o client.Object) []reconcile.Request {
	return requestsFor(ctx, r.Client, client.MatchingFields{indexAccountRelay: relayKey(o.GetNamespace(), o.GetName())})
}

// accountsUsingSecret enqueues the accounts that read the Secret (a key
// created later by sealed-secrets or External Secrets) or write it (a
// credentials Secret edited, deleted, or a foreign one removed).
func (r *AccountReconciler) accountsUsingSecret(ctx context.Context, o client.Object) []reconcile.Request {
	// A domain's keys decide which sender domains of its namespace's
	// accounts are verified.
	if ns, ok := o.GetLabels()[render.LabelDomainNamespace]; ok && o.GetNamespace() == r.DomainKeyNamespace {
		return r.accountsInNamespace(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	}
	reqs := requestsFor(ctx, r.Client, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexAccountSecret: o.GetName()})
	// A credentials Secret of the default name names its account (an
	// account of that name that set spec.secretName finds nothing to do).
	if name, ok := strings.CutSuffix(o.GetName(), render.CredentialsSecretSuffix); ok && name != "" {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: name}})
	}
	return reqs
}

// accountsInNamespace enqueues a namespace's accounts and their rival
// claimants when its labels change: a relay's namespace selector may now
// admit or refuse them, which also moves apiUser holders.
func (r *AccountReconciler) accountsInNamespace(ctx context.Context, o client.Object) []reconcile.Request {
	var list v1.SmtpAccountList
	if err := r.List(ctx, &list, client.InNamespace(o.GetName()), client.UnsafeDisableDeepCopy); err != nil {
		log.FromContext(ctx).Error(err, "list accounts to enqueue", "namespace", o.GetName())
		return nil
	}
	var reqs []reconcile.Request
	for i := range list.Items {
		reqs = append(reqs, r.claimantsOf(ctx, &list.Items[i])...)
	}
	return reqs
}

// accountOfLabel enqueues a label's account, whose Secret lists its labels.
func accountOfLabel(_ context.Context, o client.Object) []reconcile.Request {
	l := o.(*v1.SmtpLabel)
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: l.Namespace, Name: l.Spec.AccountRef}}}
}

// specOrDeletion passes creations, deletions, spec changes and the start of
// a deletion; status-only updates (our own writes) pass no further.
var specOrDeletion = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		return e.ObjectOld.GetGeneration() != e.ObjectNew.GetGeneration() ||
			(e.ObjectOld.GetDeletionTimestamp() == nil) != (e.ObjectNew.GetDeletionTimestamp() == nil)
	},
}

// relayChanged passes relay updates that can change an account: its spec
// (listeners, namespace policy) and its endpoint, not replica counts.
var relayChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, n := e.ObjectOld.(*v1.SmtpRelay), e.ObjectNew.(*v1.SmtpRelay)
		return o.Generation != n.Generation || o.Status.Endpoint != n.Status.Endpoint
	},
}

// namespaceLabelsChanged passes namespace label changes only: accounts
// cannot exist before their namespace, and go with it.
var namespaceLabelsChanged = predicate.Funcs{
	CreateFunc:  func(event.CreateEvent) bool { return false },
	DeleteFunc:  func(event.DeleteEvent) bool { return false },
	GenericFunc: func(event.GenericEvent) bool { return false },
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, n := e.ObjectOld.(*corev1.Namespace), e.ObjectNew.(*corev1.Namespace)
		return !maps.Equal(o.Labels, n.Labels)
	},
}
