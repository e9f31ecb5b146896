package controllers

import (
	"context"
	"fmt"
	"maps"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// indexLabelAccount: spec.accountRef, in the label's namespace. Shared with
// the account controller and the publisher.
//
// There is no index by labelId: rivals for a labelId are found among the
// account's labels (accountLabels), of which at most MaxLabelsPerAccount
// are served, and every index value costs about 0.5 KiB of operator memory
// per label (a set for the namespace and one for the cluster), some 25 MiB
// at 50,000 labels.
const indexLabelAccount = "mailfleet.io/label-account"

// LabelReconciler validates an SmtpLabel against its account: the account
// exists in the label's namespace and is Ready, and no older label of the
// account uses the same labelId. A Ready label can log in as
// api_user#label_id.
type LabelReconciler struct {
	client.Client
	// APIReader confirms that a label's account, missing from the cache,
	// is missing (default: the manager's API reader).
	APIReader client.Reader
	Recorder  events.EventRecorder
	// MaxLabels is the per-account cap (default MaxLabelsPerAccount).
	MaxLabels int
}

// +kubebuilder:rbac:groups=mailfleet.io,resources=smtplabels,verbs=get;list;watch
// +kubebuilder:rbac:groups=mailfleet.io,resources=smtplabels/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=mailfleet.io,resources=smtpaccounts,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager registers the controller and its watches (the indexes it
// reads are IndexFields').
// Unset fields are taken from the manager.
func (r *LabelReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder(FieldManager)
	}
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("smtplabel").
		WithOptions(controller.Options{MaxConcurrentReconciles: concurrentReconciles}).
		For(&v1.SmtpLabel{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// An account's readiness and apiUser decide its labels'.
		Watches(&v1.SmtpAccount{}, handler.EnqueueRequestsFromMapFunc(r.labelsOfAccount)).
		// A label's arrival or departure decides which of its rivals holds the labelId.
		Watches(&v1.SmtpLabel{}, handler.EnqueueRequestsFromMapFunc(r.rivalsOf), builder.WithPredicates(specOrDeletion)).
		// Past an account's cap, any label coming or going may move another
		// into or out of the served ones (labels of one second are ordered
		// by name, and the cache sees them in any order). This costs n² list
		// work for an account over its cap, at each start too: bound the
		// labels a namespace may create with a ResourceQuota.
		Watches(&v1.SmtpLabel{}, handler.EnqueueRequestsFromMapFunc(r.labelsAtCap), builder.WithPredicates(specOrDeletion)).
		Complete(r)
}

// Reconcile brings one SmtpLabel's status up to date.
func (r *LabelReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	label := &v1.SmtpLabel{}
	if err := r.Get(ctx, req.NamespacedName, label); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if label.DeletionTimestamp != nil {
		return ctrl.Result{}, nil
	}
	out, username, err := r.evaluate(ctx, label)
	if err != nil || out == nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, r.writeStatus(ctx, label, out, username)
}

// evaluate decides the label's Ready condition and username. A nil outcome
// means there is nothing to record yet.
func (r *LabelReconciler) evaluate(ctx context.Context, label *v1.SmtpLabel) (*readyOutcome, string, error) {
	acc := &v1.SmtpAccount{}
	key := types.NamespacedName{Namespace: label.Namespace, Name: label.Spec.AccountRef}
	if err := getConfirmed(ctx, r.Client, r.APIReader, key, acc); err != nil {
		if apierrors.IsNotFound(err) {
			return problem(v1.ReasonAccountNotFound, "SmtpAccount %q not found in namespace %q; a label belongs to an account in its own namespace",
				key.Name, key.Namespace), "", nil
		}
		return nil, "", fmt.Errorf("get account %s: %w", key, err)
	}
	username := wire.Username(render.APIUser(acc), label.Spec.LabelID)
	// A label created together with its account usually finds the account
	// not reconciled yet. Saying so would last only until the account's
	// first status write, which enqueues the label again (labelsOfAccount),
	// and would double the status writes of a bulk creation (20,000 labels
	// with their accounts) for nothing a person could act on. A label that
	// already has a condition is still updated, so none is left stale.
	if meta.FindStatusCondition(acc.Status.Conditions, v1.ConditionReady) == nil &&
		meta.FindStatusCondition(label.Status.Conditions, v1.ConditionReady) == nil {
		return nil, username, nil
	}
	if out := accountNotReady(acc); out != nil {
		return out, username, nil
	}
	all, err := accountLabels(ctx, r.Client, label.Namespace, label.Spec.AccountRef)
	if err != nil {
		return nil, "", err
	}
	holder := oldestLabel(withLabelID(all, label.Spec.LabelID))
	if holder != nil && holder.UID != label.UID {
		return problem(v1.ReasonConflict, "labelId %q of SmtpAccount %q is already used by SmtpLabel %q (the oldest label wins); choose another labelId",
			label.Spec.LabelID, acc.Name, holder.Name), username, nil
	}
	if !slices.ContainsFunc(servedLabels(all, r.MaxLabels), func(l *v1.SmtpLabel) bool { return l.UID == label.UID }) {
		return problem(v1.ReasonTooManyLabels, "SmtpAccount %q has more than %d labels and only the %d oldest are served; delete labels or move some to another account",
			acc.Name, labelCap(r.MaxLabels), labelCap(r.MaxLabels)), username, nil
	}
	if label.Spec.Suspended {
		return &readyOutcome{reason: v1.ReasonSuspended, message: "spec.suspended is true: logins as " + username + " are refused"}, username, nil
	}
	return &readyOutcome{ready: true, reason: v1.ReasonReady, message: "clients log in as " + username}, username, nil
}

// accountNotReady explains why a label cannot work while its account does not.
func accountNotReady(acc *v1.SmtpAccount) *readyOutcome {
	c := meta.FindStatusCondition(acc.Status.Conditions, v1.ConditionReady)
	switch {
	case c == nil:
		return &readyOutcome{reason: v1.ReasonAccountNotReady,
			message: fmt.Sprintf("SmtpAccount %q has not been reconciled yet", acc.Name)}
	case c.Status != metav1.ConditionTrue:
		// The account's own Warning already tells a person what to fix.
		return &readyOutcome{reason: v1.ReasonAccountNotReady,
			message: fmt.Sprintf("SmtpAccount %q is not ready (%s): %s", acc.Name, c.Reason, c.Message)}
	}
	return nil
}

// writeStatus records the outcome when it changes anything.
func (r *LabelReconciler) writeStatus(ctx context.Context, label *v1.SmtpLabel, out *readyOutcome, username string) error {
	next := label.Status.DeepCopy()
	next.ObservedGeneration = label.Generation
	next.Username = username
	setReady(&next.Conditions, label.Generation, out.ready, out.reason, out.message)
	orig := label.DeepCopy()
	label.Status = *next
	changed, err := patchStatus(ctx, r.Client, label, orig, func(l *v1.SmtpLabel) any { return l.Status })
	if changed {
		out.warnIfNew(r.Recorder, label, meta.FindStatusCondition(orig.Status.Conditions, v1.ConditionReady))
	}
	return err
}

func oldestLabel(labels []v1.SmtpLabel) *v1.SmtpLabel {
	var holder *v1.SmtpLabel
	for i := range labels {
		l := &labels[i]
		if l.DeletionTimestamp == nil && (holder == nil || createdBefore(l, holder)) {
			holder = l
		}
	}
	return holder
}

// publishedLabels returns the labelIds an account's Secret lists: each
// labelId's holder, unless it is suspended. This is the label controller's
// rule without the account's own readiness, which the caller has checked.
func publishedLabels(ctx context.Context, c client.Reader, acc *v1.SmtpAccount, maxLabels int) ([]string, error) {
	all, err := accountLabels(ctx, c, acc.Namespace, acc.Name)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, l := range servedLabels(all, maxLabels) {
		if !l.Spec.Suspended {
			ids = append(ids, l.Spec.LabelID)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// MaxLabelsPerAccount bounds the labels one account is served with: each
// adds a username to the credentials Secret and an entry to a shard, both
// under the API server's 1 MiB object limit, and a tenant must not be able
// to grow them without end. The oldest labels are served. A ResourceQuota on
// count/smtplabels.mailfleet.io bounds how many a namespace may create.
const MaxLabelsPerAccount = 1000

// accountLabels lists an account's labels from the cache, without a deep
// copy: they must not be changed.
func accountLabels(ctx context.Context, c client.Reader, ns, account string) ([]v1.SmtpLabel, error) {
	var list v1.SmtpLabelList
	if err := c.List(ctx, &list, client.InNamespace(ns), client.MatchingFields{indexLabelAccount: account}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list labels of account %s/%s: %w", ns, account, err)
	}
	return list.Items, nil
}

// servedLabels are the labels of one account that hold their labelId (the
// oldest of each), oldest first, at most maxLabels of them (0: the
// default cap).
func servedLabels(all []v1.SmtpLabel, maxLabels int) []*v1.SmtpLabel {
	holders := map[string]*v1.SmtpLabel{}
	for i := range all {
		l := &all[i]
		if h := holders[l.Spec.LabelID]; l.DeletionTimestamp == nil && (h == nil || createdBefore(l, h)) {
			holders[l.Spec.LabelID] = l
		}
	}
	served := slices.Collect(maps.Values(holders))
	slices.SortFunc(served, func(a, b *v1.SmtpLabel) int {
		if createdBefore(a, b) {
			return -1
		}
		return 1
	})
	return served[:min(len(served), labelCap(maxLabels))]
}

// withLabelID returns, in a slice of its own, the labels of all that use id.
func withLabelID(all []v1.SmtpLabel, id string) []v1.SmtpLabel {
	return slices.DeleteFunc(slices.Clone(all), func(l v1.SmtpLabel) bool { return l.Spec.LabelID != id })
}

// labelCap is maxLabels, or MaxLabelsPerAccount when it is 0.
func labelCap(maxLabels int) int {
	if maxLabels > 0 {
		return maxLabels
	}
	return MaxLabelsPerAccount
}

// labelsOfAccount enqueues an account's labels.
func (r *LabelReconciler) labelsOfAccount(ctx context.Context, o client.Object) []reconcile.Request {
	return labelRequests(ctx, r.Client, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexLabelAccount: o.GetName()})
}

// labelsAtCap enqueues every label of the account of o when the account has
// at least its cap of them.
func (r *LabelReconciler) labelsAtCap(ctx context.Context, o client.Object) []reconcile.Request {
	label := o.(*v1.SmtpLabel)
	all, err := accountLabels(ctx, r.Client, label.Namespace, label.Spec.AccountRef)
	if err != nil {
		log.FromContext(ctx).Error(err, "list labels to enqueue")
		return nil
	}
	if len(all) < labelCap(r.MaxLabels) {
		return nil // all served, before and after
	}
	reqs := make([]reconcile.Request, 0, len(all))
	for i := range all {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&all[i])})
	}
	return reqs
}

// rivalsOf enqueues the labels of the same account with the same labelId.
func (r *LabelReconciler) rivalsOf(ctx context.Context, o client.Object) []reconcile.Request {
	label := o.(*v1.SmtpLabel)
	all, err := accountLabels(ctx, r.Client, label.Namespace, label.Spec.AccountRef)
	if err != nil {
		log.FromContext(ctx).Error(err, "list labels to enqueue")
		return nil
	}
	rivals := withLabelID(all, label.Spec.LabelID)
	reqs := make([]reconcile.Request, 0, len(rivals))
	for i := range rivals {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&rivals[i])})
	}
	return reqs
}

func labelRequests(ctx context.Context, c client.Reader, opts ...client.ListOption) []reconcile.Request {
	var list v1.SmtpLabelList
	if err := c.List(ctx, &list, append(opts, client.UnsafeDisableDeepCopy)...); err != nil {
		log.FromContext(ctx).Error(err, "list labels to enqueue")
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for _, l := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&l)})
	}
	return reqs
}
