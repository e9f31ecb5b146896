package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// secretWaitInterval is how often an account re-reads a referenced Secret
// that is missing. The Secret watch normally notices its creation at once;
// this is the fallback.
const secretWaitInterval = 10 * time.Second

// defaultSecretRefKey is spec.key.secretRef.key when the API server has not
// defaulted it.
const defaultSecretRefKey = "api-key"

// concurrentReconciles is how many accounts, and how many labels, are
// reconciled at once. A reconcile spends nearly all its time waiting for the
// API server (a Secret read, an apply, a status patch), so one worker caps a
// controller at a few dozen objects a second, however idle the API server;
// 10,000 accounts then take minutes to come Ready. Each object's key is
// still handled by one worker at a time, and apiUser and labelId holders are
// decided from creation order, not from status, so parallel reconciles of
// rivals reach the same answer.
const concurrentReconciles = 16

// AccountReconciler turns an SmtpAccount into its credentials Secret and
// status: it checks the account may attach to its relay and holds its
// apiUser there, then issues, keeps or rotates its key.
type AccountReconciler struct {
	client.Client
	// Secrets reads the operator's own Secrets, with their data, and
	// remembers its writes until that cache shows them, so a key is never
	// issued twice on a stale copy (default: a cache of its own).
	Secrets *OwnedSecrets
	// APIReader reads around the caches, which hold no data of a Secret
	// the operator did not write: a referenced key whose Secret changed;
	// and it confirms that a relay missing from the cache is missing.
	APIReader client.Reader
	Recorder  events.EventRecorder
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// MaxLabels is the per-account label cap (default MaxLabelsPerAccount).
	MaxLabels int
	// DomainKeyNamespace is where the SmtpDomains' keys are kept (their
	// verification with them); empty: no domain is verified.
	DomainKeyNamespace string

	refKeys refKeyVersions
}

// +kubebuilder:rbac:groups=mailfleet.io,resources=smtpaccounts,verbs=get;list;watch
// +kubebuilder:rbac:groups=mailfleet.io,resources=smtpaccounts/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=mailfleet.io,resources=smtpaccounts/finalizers,verbs=update
// +kubebuilder:rbac:groups=mailfleet.io,resources=smtplabels,verbs=get;list;watch
// +kubebuilder:rbac:groups=mailfleet.io,resources=smtprelays,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager registers the controller and its watches (the indexes it
// reads are IndexFields').
// Unset fields are taken from the manager.
func (r *AccountReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	if r.Secrets == nil {
		var err error
		if r.Secrets, err = NewOwnedSecrets(mgr); err != nil {
			return err
		}
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder(FieldManager)
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("smtpaccount").
		WithOptions(controller.Options{MaxConcurrentReconciles: concurrentReconciles}).
		// Annotations carry rotation requests; status writes are ignored.
		For(&v1.SmtpAccount{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Watches(&v1.SmtpAccount{}, handler.EnqueueRequestsFromMapFunc(r.claimantsOf), builder.WithPredicates(specOrDeletion)).
		// The operator's own Secrets are watched in the cache they are read
		// from: a reconcile woken by another watch could read that cache
		// before it shows the change, and not be woken again.
		WatchesRawSource(source.Kind(r.Secrets.Cache, &corev1.Secret{}, handler.TypedEnqueueRequestsFromMapFunc(
			func(ctx context.Context, s *corev1.Secret) []reconcile.Request { return r.accountsUsingSecret(ctx, s) }))).
		// Any other Secret (a referenced key, someone's Secret of a
		// credentials Secret's name): only its name matters to find its
		// accounts, so metadata only, in a cache that leaves the
		// operator's own out (CacheOptions). The same cache says whose a
		// Secret is and when a referenced one changed.
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.accountsUsingSecret), builder.OnlyMetadata).
		Watches(&v1.SmtpRelay{}, handler.EnqueueRequestsFromMapFunc(r.accountsOfRelay), builder.WithPredicates(relayChanged)).
		// The relays' report of the webhooks their endpoints disabled.
		Watches(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(r.accountsOfWebhookStatus)).
		Watches(&v1.SmtpLabel{}, handler.EnqueueRequestsFromMapFunc(accountOfLabel), builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.accountsInNamespace), builder.WithPredicates(namespaceLabelsChanged)).
		Complete(r)
}

// readyOutcome is what one reconcile found: the Ready condition, when to
// look again, and the Secret's key state when the Secret was written.
type readyOutcome struct {
	ready        bool
	reason       string
	message      string
	warn         bool // a person must act: record a Warning event
	requeueAfter time.Duration
	secretName   string // "" when the Secret was not written
	key          render.KeyState
	// webhooks is what became of the account's webhooks, when the
	// reconcile got as far as reading them.
	webhooks        *webhooksOutcome
	webhooksChecked bool
	senders         *sendersOutcome
}

// warnIfNew records the outcome as a Warning event on obj when a person
// must act on it and the Ready condition before said something else, so a
// problem is reported once, not on every reconcile.
func (o *readyOutcome) warnIfNew(rec events.EventRecorder, obj runtime.Object, before *metav1.Condition) {
	if o.warn && (before == nil || before.Reason != o.reason || before.Message != o.message) {
		rec.Eventf(obj, nil, corev1.EventTypeWarning, o.reason, "Reconcile", "%s", o.message)
	}
}

// problem is an outcome a person must fix.
func problem(reason, format string, args ...any) *readyOutcome {
	return &readyOutcome{reason: reason, message: fmt.Sprintf(format, args...), warn: true}
}

// Reconcile brings one SmtpAccount's Secret and status up to date.
func (r *AccountReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	acc := &v1.SmtpAccount{}
	if err := r.Get(ctx, req.NamespacedName, acc); err != nil {
		// Deleted: garbage collection removes the Secret, and the watch on
		// accounts has already enqueued its rival claimants.
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if acc.DeletionTimestamp != nil {
		return ctrl.Result{}, nil
	}
	out, err := r.reconcileAccount(ctx, acc)
	if apierrors.IsConflict(err) {
		// The Secret changed since it was read; decide again on the new one.
		ctrl.LoggerFrom(ctx).V(1).Info("credentials Secret changed while reconciling; retrying")
		return ctrl.Result{RequeueAfter: 100 * time.Millisecond}, nil
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.writeStatus(ctx, acc, out); err != nil {
		return ctrl.Result{}, err
	}
	ctrl.LoggerFrom(ctx).V(1).Info("reconciled", "ready", out.ready, "reason", out.reason, "requeueAfter", out.requeueAfter)
	return ctrl.Result{RequeueAfter: out.requeueAfter}, nil
}

// reconcileAccount runs the checks in the order a person would fix them:
// relay, tenancy, apiUser, key source, Secret, suspension.
func (r *AccountReconciler) reconcileAccount(ctx context.Context, acc *v1.SmtpAccount) (*readyOutcome, error) {
	relay, out, err := r.attach(ctx, acc)
	if err != nil || out != nil {
		return out, err
	}
	existing, err := r.credentialsSecret(ctx, acc, render.CredentialsSecretName(acc))
	if err != nil {
		return nil, err
	}
	refKey, out, err := r.referencedKey(ctx, acc, existing)
	if err != nil || out != nil {
		return out, err
	}
	hooks, err := r.webhookSecrets(ctx, acc)
	if err != nil {
		return nil, err
	}
	out, err = r.applySecret(ctx, acc, relay, existing, refKey, hooks)
	if err != nil || !out.ready {
		return out, err
	}
	out.webhooks, out.webhooksChecked = hooks, true
	if out.senders, err = r.senderDomains(ctx, acc, relay); err != nil {
		return nil, err
	}
	if acc.Spec.Suspended {
		out.ready, out.reason = false, v1.ReasonSuspended
		out.message = "spec.suspended is true: the account does not authenticate; its Secret is kept"
	}
	return out, nil
}

// attach finds the account's relay and checks that the relay admits the
// account's namespace and that the account holds its apiUser there. A
// non-nil outcome stops the reconcile; the Secret is then left as it is.
func (r *AccountReconciler) attach(ctx context.Context, acc *v1.SmtpAccount) (*v1.SmtpRelay, *readyOutcome, error) {
	key := accountRelay(acc)
	relay := &v1.SmtpRelay{}
	if err := getConfirmed(ctx, r.Client, r.APIReader, key, relay); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, problem(v1.ReasonRelayNotFound,
				"SmtpRelay %s not found; create it or correct spec.relayRef", key), nil
		}
		return nil, nil, fmt.Errorf("get relay %s: %w", key, err)
	}
	out, err := claim(ctx, r.Client, relay, acc)
	if err != nil || out != nil {
		return nil, out, err
	}
	// What admission let through but the relay would refuse (the two
	// share a test table, so this is a backstop): the publisher leaves the
	// account out, and this says why.
	probe := render.ShardEntry(acc, relay, []string{wire.Digest(acc.Name)}, nil)
	if err := wire.CheckAccount(probe); err != nil {
		return nil, problem(v1.ReasonInvalidSpec, "the relay would refuse this account (%s); correct the spec", err), nil
	}
	return relay, nil, nil
}

// claim checks that relay admits acc's namespace and that acc holds its
// apiUser there; a non-nil outcome says why not. The account controller
// reports it; the publisher withholds the account's credentials for it.
func claim(ctx context.Context, c client.Reader, relay *v1.SmtpRelay, acc *v1.SmtpAccount) (*readyOutcome, error) {
	ok, why, err := relayAdmitsNamespace(ctx, c, relay, acc.Namespace)
	if err != nil {
		return nil, err
	}
	if !ok {
		return problem(v1.ReasonNamespaceNotAllowed, "%s", why), nil
	}
	apiUser := render.APIUser(acc)
	holder, err := apiUserHolder(ctx, c, relay, apiUser)
	if err != nil {
		return nil, err
	}
	if holder == nil || holder.UID == acc.UID {
		return nil, nil
	}
	key := client.ObjectKeyFromObject(relay)
	// Another tenant's namespace and names are not this tenant's to learn:
	// name the holder only when it is in the same namespace.
	if holder.Namespace == acc.Namespace {
		return problem(v1.ReasonConflict,
			"apiUser %q on SmtpRelay %s is already held by SmtpAccount %q (the oldest claim wins); choose another spec.apiUser",
			apiUser, key, holder.Name), nil
	}
	return problem(v1.ReasonConflict,
		"apiUser %q on SmtpRelay %s is taken by an account in another namespace; choose another spec.apiUser",
		apiUser, key), nil
}

// referencedKey reads the key of a secretRef account; "" for generated keys.
// A missing Secret or key is waited for: sealed-secrets and External Secrets
// create them asynchronously. The key is read from the API server only
// when the Secret changed since it was last read (its metadata is cached);
// until then it is the key existing, the credentials Secret, holds.
func (r *AccountReconciler) referencedKey(ctx context.Context, acc *v1.SmtpAccount, existing *corev1.Secret) (string, *readyOutcome, error) {
	ref := acc.Spec.Key.SecretRef
	if ref == nil {
		return "", nil, nil
	}
	dataKey := ref.Key
	if dataKey == "" {
		dataKey = defaultSecretRefKey
	}
	name := types.NamespacedName{Namespace: acc.Namespace, Name: ref.Name}
	notFound := func() (string, *readyOutcome, error) {
		r.refKeys.forget(name)
		out := problem(v1.ReasonSecretNotFound,
			"waiting for Secret %q (spec.key.secretRef.name) in namespace %q; the account is set up as soon as it exists", ref.Name, acc.Namespace)
		out.requeueAfter = secretWaitInterval
		return "", out, nil
	}
	m, err := r.Secrets.metadata(ctx, name)
	if err != nil {
		return "", nil, err
	}
	if m == nil {
		return notFound()
	}
	if cur := render.KeyStateFromSecret(existing).Key; cur != "" && r.refKeys.unchanged(name, m, dataKey, cur) {
		return cur, nil, nil
	}
	s, err := getSecret(ctx, r.APIReader, acc.Namespace, ref.Name)
	if err != nil {
		return "", nil, err
	}
	if s == nil {
		return notFound()
	}
	key := string(s.Data[dataKey])
	if key == "" {
		out := problem(v1.ReasonSecretKeyMissing,
			"Secret %q has no key %q (spec.key.secretRef.key), or it is empty", ref.Name, dataKey)
		out.requeueAfter = secretWaitInterval
		return "", out, nil
	}
	if len(key) < wire.MinKeyLength {
		// The length only: nothing of the key itself goes into status.
		return "", problem(v1.ReasonKeyTooShort,
			"the key in Secret %q (key %q) has %d characters; use at least %d, such as the output of `openssl rand -base64 32`",
			ref.Name, dataKey, len(key), wire.MinKeyLength), nil
	}
	r.refKeys.remember(name, s, dataKey, key)
	return key, nil, nil
}

// refKeyVersions remembers, of each referenced Secret, the version whose
// key was last read and a digest of that key (never the key): while the
// Secret stays at that version and the credentials Secret holds that key,
// reconciles do not read the Secret again.
type refKeyVersions struct {
	mu sync.Mutex
	m  map[types.NamespacedName]refKeyVersion
}

type refKeyVersion struct {
	uid                              types.UID
	resourceVersion, dataKey, digest string
}

func (v *refKeyVersions) remember(name types.NamespacedName, s *corev1.Secret, dataKey, key string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil {
		v.m = map[types.NamespacedName]refKeyVersion{}
	}
	v.m[name] = refKeyVersion{uid: s.UID, resourceVersion: s.ResourceVersion, dataKey: dataKey, digest: wire.Digest(key)}
}

// unchanged reports whether m is the version of the Secret whose key was
// last read, under dataKey, and that key is key.
func (v *refKeyVersions) unchanged(name types.NamespacedName, m metav1.Object, dataKey, key string) bool {
	v.mu.Lock()
	seen, ok := v.m[name]
	v.mu.Unlock()
	return ok && seen.uid == m.GetUID() && seen.resourceVersion == m.GetResourceVersion() &&
		seen.dataKey == dataKey && seen.digest == wire.Digest(key)
}

func (v *refKeyVersions) forget(name types.NamespacedName) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.m, name)
}

// applySecret decides the key and writes the credentials Secret with
// server-side apply, unless a Secret of that name (existing) belongs to
// someone else.
func (r *AccountReconciler) applySecret(ctx context.Context, acc *v1.SmtpAccount, relay *v1.SmtpRelay, existing *corev1.Secret, refKey string, hooks *webhooksOutcome) (*readyOutcome, error) {
	name := render.CredentialsSecretName(acc)
	if out := notOwned(acc, existing); out != nil {
		return out, nil
	}
	prev, err := r.currentKey(ctx, acc, existing)
	if err != nil {
		return nil, err
	}
	plan := planFor(acc, client.ObjectKeyFromObject(relay), refKey, r.now())
	if existing == nil && prev.Key == "" {
		if prev, err = r.graceForLostKey(ctx, acc, plan); err != nil {
			return nil, err
		}
	}
	next, change, err := nextKey(prev, plan)
	if err != nil {
		return nil, err
	}
	labelIDs, err := publishedLabels(ctx, r.Client, acc, r.MaxLabels)
	if err != nil {
		return nil, err
	}
	in := render.CredentialsInput{Account: acc, Relay: relay, LabelIDs: labelIDs, Key: next}
	if hooks != nil {
		in.WebhookSecrets = hooks.secrets
	}
	desired := render.CredentialsSecret(in)
	if err := r.write(ctx, existing, desired); err != nil {
		if out := writeRefused(desired.Name, err); out != nil {
			return out, nil
		}
		return nil, err
	}
	r.keyEvent(acc, desired, change, next)
	if err := r.dropRenamedSecret(ctx, acc, name); err != nil {
		return nil, err
	}
	out := &readyOutcome{ready: true, reason: v1.ReasonReady,
		message: fmt.Sprintf("credentials are in Secret %q", name), secretName: name, key: next}
	if next.PreviousDigest != "" {
		// Look again when the previous key expires, to remove its digest.
		out.requeueAfter = next.PreviousExpiry.Sub(plan.Now) + 100*time.Millisecond
	}
	return out, nil
}

// writeRefused turns an API server's refusal to store the credentials
// Secret (a ResourceQuota, an admission policy, a label it will not take)
// into a condition and an Event a person can act on; retrying alone would
// only log. Transient errors (nil here) are retried as usual.
func writeRefused(name string, err error) *readyOutcome {
	if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) && !apierrors.IsRequestEntityTooLargeError(err) {
		return nil
	}
	var status apierrors.APIStatus
	msg := err.Error()
	if errors.As(err, &status) {
		msg = status.Status().Message
	}
	out := problem(v1.ReasonSecretWriteFailed, "the API server refused to write Secret %q: %s", name, msg)
	out.requeueAfter = secretWaitInterval
	return out
}

// notOwned refuses a Secret of the credentials name that this account does
// not control: it may be someone's data, so it is never overwritten.
func notOwned(acc *v1.SmtpAccount, s *corev1.Secret) *readyOutcome {
	if s == nil || accountHolds(s, acc) {
		return nil
	}
	return problem(v1.ReasonSecretNotOwned,
		"Secret %q already exists and is not managed by this SmtpAccount; set another spec.secretName or delete that Secret", s.Name)
}

// currentKey is the key state to start from: the Secret's, or, when the
// Secret is new because spec.secretName changed, the old Secret's, so a
// rename does not change the key.
func (r *AccountReconciler) currentKey(ctx context.Context, acc *v1.SmtpAccount, existing *corev1.Secret) (render.KeyState, error) {
	if existing != nil {
		return render.KeyStateFromSecret(existing), nil
	}
	old, err := r.renamedSecret(ctx, acc)
	return render.KeyStateFromSecret(old), err
}

// graceForLostKey is the key state to start from when the account's
// credentials Secret is gone (someone deleted it) after a key was
// published: the published key stays valid for the rotation grace period
// beside the new one, as with any rotation, so its senders are not cut off
// between the deletion and their picking up the new key. The digest comes
// from the shard the operator wrote, never from anything a tenant writes;
// status.secretName only says whether to look.
func (r *AccountReconciler) graceForLostKey(ctx context.Context, acc *v1.SmtpAccount, plan keyPlan) (render.KeyState, error) {
	if acc.Status.SecretName == "" || plan.Grace == 0 {
		return render.KeyState{}, nil
	}
	relay, apiUser := accountRelay(acc), render.APIUser(acc)
	shard, err := r.Secrets.read(ctx, types.NamespacedName{Namespace: relay.Namespace, Name: wire.ShardSecretName(relay.Name, wire.ShardOf(apiUser))})
	if err != nil || shard == nil {
		return render.KeyState{}, err
	}
	a, ok := shardAccounts(shard)[apiUser]
	if !ok || len(a.KeyDigests) == 0 || (plan.RefKey != "" && wire.MatchDigest(a.KeyDigests[0], plan.RefKey)) {
		return render.KeyState{}, nil // nothing published, or the same key: no grace to give
	}
	return render.KeyState{PreviousDigest: a.KeyDigests[0], PreviousExpiry: plan.stamp().Add(plan.Grace)}, nil
}

// renamedSecret is the account's previous credentials Secret when
// spec.secretName changed, if this account controls it.
func (r *AccountReconciler) renamedSecret(ctx context.Context, acc *v1.SmtpAccount) (*corev1.Secret, error) {
	old := acc.Status.SecretName
	if old == "" || old == render.CredentialsSecretName(acc) {
		return nil, nil
	}
	s, err := r.credentialsSecret(ctx, acc, old)
	if err != nil || s == nil || !accountHolds(s, acc) {
		return nil, err
	}
	return s, nil
}

// credentialsSecret reads the Secret called name in the account's
// namespace; nil when there is none. The operator's own Secrets come with
// their data from r.Secrets. Any other Secret of that name comes as its
// metadata alone, which is all notOwned needs, unless that says it is the
// account's (its labels removed by someone, or the caches not agreeing for
// a moment): that one is read from the API server.
func (r *AccountReconciler) credentialsSecret(ctx context.Context, acc *v1.SmtpAccount, name string) (*corev1.Secret, error) {
	key := types.NamespacedName{Namespace: acc.Namespace, Name: name}
	if s, err := r.Secrets.read(ctx, key); err != nil || s != nil {
		return s, err
	}
	m, err := r.Secrets.metadata(ctx, key)
	if err != nil || m == nil {
		return nil, err
	}
	if !accountHolds(m, acc) {
		return &corev1.Secret{ObjectMeta: *m}, nil
	}
	return getSecret(ctx, r.APIReader, key.Namespace, key.Name)
}

// dropRenamedSecret deletes the previous credentials Secret once its key
// lives under the new name, when the account's secretRetention is Delete;
// with Retain it stays, as it would if the account were deleted.
func (r *AccountReconciler) dropRenamedSecret(ctx context.Context, acc *v1.SmtpAccount, name string) error {
	if acc.Spec.SecretRetention != v1.SecretRetentionDelete {
		return nil
	}
	old, err := r.renamedSecret(ctx, acc)
	if err != nil || old == nil {
		return err
	}
	err = r.Delete(ctx, old, client.Preconditions{UID: &old.UID})
	r.Secrets.forget(client.ObjectKeyFromObject(old))
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete renamed credentials Secret %s/%s: %w", old.Namespace, old.Name, err)
	}
	ctrl.LoggerFrom(ctx).Info("moved credentials to the new Secret", "from", old.Name, "to", name)
	return nil
}

// write applies desired unless existing already matches it. The apply is
// conditional on the resourceVersion read, so a key decided on a copy that
// another writer has since changed fails with a conflict instead of
// overwriting a newer key. What was written is remembered until the cache
// shows it.
func (r *AccountReconciler) write(ctx context.Context, existing, desired *corev1.Secret) error {
	if existing != nil {
		if secretUpToDate(existing, desired) {
			return nil
		}
		desired.ResourceVersion = existing.ResourceVersion
	}
	if err := writeSecret(ctx, r.Client, desired); err != nil {
		if apierrors.IsConflict(err) {
			r.Secrets.forget(client.ObjectKeyFromObject(desired))
		}
		return fmt.Errorf("apply credentials Secret %s/%s: %w", desired.Namespace, desired.Name, err)
	}
	r.Secrets.wrote(desired)
	return nil
}

// keyEvent records a rotation, which a person asked for (or made, in a
// referenced Secret) and whose grace period they must act within. A first
// key is no news: every new account gets one, and an Event each would bury
// the ones a person must read (status.keyRotatedAt records it). The message
// names the Secret, never the key.
func (r *AccountReconciler) keyEvent(acc *v1.SmtpAccount, s *corev1.Secret, change keyChange, k render.KeyState) {
	switch change {
	case keyRotated:
		note := "the previous key stopped working at once (rotationGracePeriod is 0)"
		if k.PreviousDigest != "" {
			note = "the previous key works until " + render.FormatTime(k.PreviousExpiry)
		}
		r.Recorder.Eventf(acc, s, corev1.EventTypeNormal, "KeyRotated", "RotateKey",
			"issued a new key in Secret %q; %s", s.Name, note)
	}
}

// writeStatus records the outcome, only when it changes anything, so that
// status writes never feed a reconcile loop.
func (r *AccountReconciler) writeStatus(ctx context.Context, acc *v1.SmtpAccount, out *readyOutcome) error {
	next := acc.Status.DeepCopy()
	next.ObservedGeneration = acc.Generation
	next.APIUser = render.APIUser(acc)
	if out.secretName != "" {
		next.SecretName = out.secretName
		next.KeyRotatedAt = metaTime(out.key.IssuedAt)
		next.PreviousKeyExpiresAt = nil
		if out.key.PreviousDigest != "" {
			next.PreviousKeyExpiresAt = metaTime(out.key.PreviousExpiry)
		}
	}
	setReady(&next.Conditions, acc.Generation, out.ready, out.reason, out.message)
	if out.webhooksChecked {
		setWebhooksReady(r.Recorder, acc, &next.Conditions, out.webhooks)
		setWebhookDisabled(r.Recorder, acc, &next.Conditions, out.webhooks)
		setSenderDomainsVerified(r.Recorder, acc, &next.Conditions, out.senders)
	}
	orig := acc.DeepCopy()
	acc.Status = *next
	changed, err := patchStatus(ctx, r.Client, acc, orig, func(a *v1.SmtpAccount) any { return a.Status })
	if changed {
		out.warnIfNew(r.Recorder, acc, meta.FindStatusCondition(orig.Status.Conditions, v1.ConditionReady))
	}
	return err
}

func (r *AccountReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// getSecret returns the Secret, or nil when there is none.
func getSecret(ctx context.Context, c client.Reader, namespace, name string) (*corev1.Secret, error) {
	s := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, s); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("get Secret %s/%s: %w", namespace, name, err)
	}
	return s, nil
}

func metaTime(t time.Time) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	return &metav1.Time{Time: t}
}
