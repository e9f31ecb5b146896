package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
)

// indexSuppressionAccount: spec.accountRef, in the SmtpSuppression's
// namespace.
const indexSuppressionAccount = "mailfleet.io/suppression-account"

// accountSuppressions is what an account's shard entry lists of its
// SmtpSuppressions at now: their addresses, oldest object first, each
// once, at most wire.MaxSuppressions; leftOut are the objects not wholly
// published for the cap. A tenant names its account by name alone, so
// only SmtpSuppressions of the account's own namespace are read: no
// object reaches another tenant's account.
func accountSuppressions(ctx context.Context, c client.Reader, acc *v1.SmtpAccount, now time.Time) (list []wire.Suppression, leftOut []types.NamespacedName, next time.Time, err error) {
	var objs v1.SmtpSuppressionList
	if err := c.List(ctx, &objs, client.InNamespace(acc.Namespace), client.MatchingFields{indexSuppressionAccount: acc.Name}); err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("list the SmtpSuppressions of account %s/%s: %w", acc.Namespace, acc.Name, err)
	}
	items := objs.Items
	slices.SortFunc(items, func(a, b v1.SmtpSuppression) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	seen := map[string]bool{}
	for i := range items {
		s := &items[i]
		if s.DeletionTimestamp != nil || (s.Spec.ExpiresAt != nil && !now.Before(s.Spec.ExpiresAt.Time)) {
			continue
		}
		var until *time.Time
		if s.Spec.ExpiresAt != nil {
			t := s.Spec.ExpiresAt.UTC()
			until = &t
			if next.IsZero() || t.Before(next) {
				next = t
			}
		}
		complete := true
		for _, addr := range s.Spec.Addresses {
			e := wire.Suppression{Address: strings.ToLower(addr), Source: s.Namespace + "/" + s.Name, Reason: s.Spec.Reason, Until: until}
			switch {
			case seen[e.Address] || wire.CheckSuppression(e) != nil:
			case len(list) >= wire.MaxSuppressions:
				complete = false
			default:
				seen[e.Address] = true
				list = append(list, e)
			}
		}
		if !complete {
			leftOut = append(leftOut, client.ObjectKeyFromObject(s))
		}
	}
	return list, leftOut, next, nil
}

// SuppressionReconciler tells a person whether an SmtpSuppression is
// published: its account exists in its namespace, it has not expired, and
// it fits under the account's cap.
type SuppressionReconciler struct {
	client.Client
	Recorder events.EventRecorder
	Now      func() time.Time
}

// +kubebuilder:rbac:groups=mailfleet.io,resources=smtpsuppressions,verbs=get;list;watch
// +kubebuilder:rbac:groups=mailfleet.io,resources=smtpsuppressions/status,verbs=get;update;patch

// SetupWithManager registers the controller; the index it reads is
// IndexFields'.
func (r *SuppressionReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder(FieldManager)
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("smtpsuppression").
		For(&v1.SmtpSuppression{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// An account appearing or going decides its SmtpSuppressions'; one
		// of them coming or going may move another under or over the cap.
		Watches(&v1.SmtpAccount{}, handler.EnqueueRequestsFromMapFunc(r.ofAccount)).
		Watches(&v1.SmtpSuppression{}, handler.EnqueueRequestsFromMapFunc(r.siblings), builder.WithPredicates(specOrDeletion)).
		Complete(r)
}

func (r *SuppressionReconciler) ofAccount(ctx context.Context, o client.Object) []reconcile.Request {
	return r.suppressionsOf(ctx, o.GetNamespace(), o.GetName())
}

func (r *SuppressionReconciler) siblings(ctx context.Context, o client.Object) []reconcile.Request {
	return r.suppressionsOf(ctx, o.GetNamespace(), o.(*v1.SmtpSuppression).Spec.AccountRef)
}

// suppressionsOf enqueues the SmtpSuppressions of the account ns/name.
func (r *SuppressionReconciler) suppressionsOf(ctx context.Context, ns, name string) []reconcile.Request {
	var list v1.SmtpSuppressionList
	if err := r.List(ctx, &list, client.InNamespace(ns), client.MatchingFields{indexSuppressionAccount: name}, client.UnsafeDisableDeepCopy); err != nil {
		log.FromContext(ctx).Error(err, "list the SmtpSuppressions of an account", "account", ns+"/"+name)
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return reqs
}

// Reconcile records whether the SmtpSuppression is published.
func (r *SuppressionReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	s := &v1.SmtpSuppression{}
	if err := r.Get(ctx, req.NamespacedName, s); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if s.DeletionTimestamp != nil {
		return ctrl.Result{}, nil
	}
	out, requeue, err := r.evaluate(ctx, s)
	if err != nil {
		return ctrl.Result{}, err
	}
	next := s.Status.DeepCopy()
	next.ObservedGeneration = s.Generation
	setReady(&next.Conditions, s.Generation, out.ready, out.reason, out.message)
	orig := s.DeepCopy()
	s.Status = *next
	changed, err := patchStatus(ctx, r.Client, s, orig, func(x *v1.SmtpSuppression) any { return x.Status })
	if changed {
		out.warnIfNew(r.Recorder, s, meta.FindStatusCondition(orig.Status.Conditions, v1.ConditionReady))
	}
	return ctrl.Result{RequeueAfter: requeue}, err
}

func (r *SuppressionReconciler) evaluate(ctx context.Context, s *v1.SmtpSuppression) (*readyOutcome, time.Duration, error) {
	now := r.Now()
	acc := &v1.SmtpAccount{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: s.Spec.AccountRef}, acc); apierrors.IsNotFound(err) {
		return problem(v1.ReasonAccountNotFound, "SmtpAccount %q not found in namespace %q; an SmtpSuppression belongs to an account of its own namespace",
			s.Spec.AccountRef, s.Namespace), 0, nil
	} else if err != nil {
		return nil, 0, err
	}
	if s.Spec.ExpiresAt != nil && !now.Before(s.Spec.ExpiresAt.Time) {
		return &readyOutcome{reason: v1.ReasonExpired, message: "spec.expiresAt has passed: the addresses get mail again; delete the object or move expiresAt"}, 0, nil
	}
	_, leftOut, _, err := accountSuppressions(ctx, r.Client, acc, now)
	if err != nil {
		return nil, 0, err
	}
	if slices.Contains(leftOut, client.ObjectKeyFromObject(s)) {
		return problem(v1.ReasonTooManyAddresses, "SmtpAccount %q has more than %d suppressed addresses; the oldest SmtpSuppressions' are served and some of this one's are not: delete some",
			acc.Name, wire.MaxSuppressions), 0, nil
	}
	var requeue time.Duration
	if s.Spec.ExpiresAt != nil {
		requeue = s.Spec.ExpiresAt.Sub(now) + time.Second
	}
	return &readyOutcome{ready: true, reason: v1.ReasonReady,
		message: fmt.Sprintf("%d addresses suppressed for SmtpAccount %q on its relay", len(s.Spec.Addresses), acc.Name)}, requeue, nil
}
