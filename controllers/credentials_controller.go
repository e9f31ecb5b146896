package controllers

import (
	"context"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/relay/credentials"
)

// CredentialsPublisher publishes, for each SmtpRelay, the accounts that may
// use it — api_user, key digests, labels, budget, sender domains — as the
// shard Secrets its pods watch in their own namespace (DESIGN.md §3). Relay
// pods thus never read tenants' Secrets, never see a key, and get a change
// as soon as the operator writes it.
//
// An account is published while its Ready condition is True for its current
// generation; a suspended, conflicting or refused account is not, which is
// how suspension and deletion reach the relays.
type CredentialsPublisher struct {
	Client client.Client
	// Secrets reads the operator's own Secrets, with their data, from a
	// cache that holds nothing else.
	Secrets client.Reader
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// +kubebuilder:rbac:groups=mailfleet.io,resources=smtprelays;smtpaccounts;smtplabels,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;patch

// SetupWithManager registers the publisher. It needs the account and label
// indexes, which AccountReconciler.SetupWithManager registers.
func (p *CredentialsPublisher) SetupWithManager(mgr ctrl.Manager) error {
	if p.Client == nil {
		p.Client = mgr.GetClient()
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	owned, err := cache.New(mgr.GetConfig(), cache.Options{
		Scheme:           mgr.GetScheme(),
		Mapper:           mgr.GetRESTMapper(),
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{&corev1.Secret{}: {
			Label: labels.SelectorFromSet(labels.Set{LabelManagedBy: ManagedByValue}),
		}},
	})
	if err != nil {
		return fmt.Errorf("cache of the operator's Secrets: %w", err)
	}
	if err := mgr.Add(owned); err != nil {
		return fmt.Errorf("add Secrets cache: %w", err)
	}
	if p.Secrets == nil {
		p.Secrets = owned
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("credentials").
		For(&v1.SmtpRelay{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&v1.SmtpAccount{}, handler.EnqueueRequestsFromMapFunc(relayOfAccount)).
		Watches(&v1.SmtpLabel{}, handler.EnqueueRequestsFromMapFunc(p.relayOfLabel)).
		WatchesRawSource(source.Kind(owned, &corev1.Secret{}, handler.TypedEnqueueRequestsFromMapFunc(p.relayOfSecret))).
		Complete(p)
}

// Reconcile rewrites the relay's shards whose content changed.
func (p *CredentialsPublisher) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var relay v1.SmtpRelay
	if err := p.Client.Get(ctx, req.NamespacedName, &relay); err != nil {
		// A deleted relay's shards go with it: they are owned by it.
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	accounts, nextExpiry, err := p.usableAccounts(ctx, &relay)
	if err != nil {
		return ctrl.Result{}, err
	}
	shards := make([][]credentials.Account, credentials.ShardCount)
	for _, a := range accounts {
		i := credentials.ShardOf(a.APIUser)
		shards[i] = append(shards[i], a)
	}
	written := 0
	for i, shard := range shards {
		changed, err := p.writeShard(ctx, &relay, i, shard)
		if err != nil {
			return ctrl.Result{}, err
		}
		if changed {
			written++
		}
	}
	if written > 0 {
		log.FromContext(ctx).Info("credentials published", "accounts", len(accounts), "shardsWritten", written)
	}
	if nextExpiry.IsZero() {
		return ctrl.Result{}, nil
	}
	// A previous key's grace period ends: publish without its digest.
	return ctrl.Result{RequeueAfter: nextExpiry.Sub(p.Now()) + time.Second}, nil
}

// usableAccounts returns the relay's published accounts, sorted by api_user,
// and the earliest time a previous key's digest must be withdrawn.
func (p *CredentialsPublisher) usableAccounts(ctx context.Context, relay *v1.SmtpRelay) ([]credentials.Account, time.Time, error) {
	var list v1.SmtpAccountList
	if err := p.Client.List(ctx, &list, client.MatchingFields{indexAccountRelay: relayKey(relay.Namespace, relay.Name)},
		client.UnsafeDisableDeepCopy); err != nil {
		return nil, time.Time{}, fmt.Errorf("list accounts of relay %s: %w", relay.Name, err)
	}
	now := p.Now()
	var out []credentials.Account
	var nextExpiry time.Time
	for i := range list.Items {
		acc := &list.Items[i]
		if !readyNow(acc.Status.Conditions, acc.Generation) || acc.Status.APIUser == "" {
			continue
		}
		var secret corev1.Secret
		err := p.Secrets.Get(ctx, types.NamespacedName{Namespace: acc.Namespace, Name: acc.Status.SecretName}, &secret)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("read credentials of account %s/%s: %w", acc.Namespace, acc.Name, err)
		}
		digests := accountKeyDigests(&secret, now)
		if len(digests) == 0 {
			continue
		}
		if st := keyStateFromSecret(&secret); st.PreviousDigest != "" && now.Before(st.PreviousExpiry) &&
			(nextExpiry.IsZero() || st.PreviousExpiry.Before(nextExpiry)) {
			nextExpiry = st.PreviousExpiry
		}
		labels, err := p.readyLabels(ctx, acc)
		if err != nil {
			return nil, time.Time{}, err
		}
		out = append(out, credentials.Account{
			APIUser:              acc.Status.APIUser,
			KeyDigests:           digests,
			BudgetPerMinute:      budgetOf(acc, relay),
			AllowedSenderDomains: acc.Spec.AllowedSenderDomains,
			Labels:               labels,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].APIUser < out[j].APIUser })
	return out, nextExpiry, nil
}

func (p *CredentialsPublisher) readyLabels(ctx context.Context, acc *v1.SmtpAccount) ([]credentials.Label, error) {
	var list v1.SmtpLabelList
	if err := p.Client.List(ctx, &list, client.InNamespace(acc.Namespace),
		client.MatchingFields{indexLabelAccount: acc.Name}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list labels of account %s/%s: %w", acc.Namespace, acc.Name, err)
	}
	var out []credentials.Label
	for i := range list.Items {
		l := &list.Items[i]
		if readyNow(l.Status.Conditions, l.Generation) {
			out = append(out, credentials.Label{ID: l.Spec.LabelID})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func budgetOf(acc *v1.SmtpAccount, relay *v1.SmtpRelay) int {
	switch {
	case acc.Spec.BudgetPerMinute != nil:
		return int(*acc.Spec.BudgetPerMinute)
	case relay.Spec.DefaultBudgetPerMinute > 0:
		return int(relay.Spec.DefaultBudgetPerMinute)
	default:
		return credentials.DefaultBudgetPerMinute
	}
}

// readyNow reports a Ready=True condition that speaks of the current generation.
func readyNow(conds []metav1.Condition, generation int64) bool {
	c := meta.FindStatusCondition(conds, v1.ConditionReady)
	return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == generation
}

// ShardName is the name of a relay's shard Secret.
func ShardName(relay string, shard int) string {
	return fmt.Sprintf("%s-credentials-%02d", relay, shard)
}

// writeShard applies one shard when its content differs from what is there.
func (p *CredentialsPublisher) writeShard(ctx context.Context, relay *v1.SmtpRelay, i int, accounts []credentials.Account) (bool, error) {
	data, err := credentials.MarshalShard(accounts)
	if err != nil {
		return false, err
	}
	name := ShardName(relay.Name, i)
	var existing corev1.Secret
	err = p.Secrets.Get(ctx, types.NamespacedName{Namespace: relay.Namespace, Name: name}, &existing)
	if err == nil && string(existing.Data[credentials.ShardDataKey]) == string(data) {
		return false, nil
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return false, fmt.Errorf("read shard %s: %w", name, err)
	}
	shard := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: relay.Namespace,
			Labels: map[string]string{
				LabelManagedBy:         ManagedByValue,
				LabelRelay:             relay.Name,
				credentials.ShardLabel: relay.Name,
			},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(relay, v1.GroupVersion.WithKind("SmtpRelay"))},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{credentials.ShardDataKey: data},
	}
	if err := p.Client.Apply(ctx, secretApplyConfiguration(shard), client.FieldOwner(FieldManager), client.ForceOwnership); err != nil {
		return false, fmt.Errorf("apply shard %s: %w", name, err)
	}
	return true, nil
}

func relayOfAccount(_ context.Context, o client.Object) []reconcile.Request {
	return []reconcile.Request{{NamespacedName: accountRelay(o.(*v1.SmtpAccount))}}
}

func (p *CredentialsPublisher) relayOfLabel(ctx context.Context, o client.Object) []reconcile.Request {
	var acc v1.SmtpAccount
	key := types.NamespacedName{Namespace: o.GetNamespace(), Name: o.(*v1.SmtpLabel).Spec.AccountRef}
	if err := p.Client.Get(ctx, key, &acc); err != nil {
		return nil
	}
	return relayOfAccount(ctx, &acc)
}

// relayOfSecret maps a credentials Secret (a key issued or rotated) to its
// account's relay.
func (p *CredentialsPublisher) relayOfSecret(ctx context.Context, s *corev1.Secret) []reconcile.Request {
	name, ok := s.Labels[LabelAccount]
	if !ok {
		return nil
	}
	var acc v1.SmtpAccount
	if err := p.Client.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: name}, &acc); err != nil {
		return nil
	}
	return relayOfAccount(ctx, &acc)
}
