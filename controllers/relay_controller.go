package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// Field indexes on SmtpRelay, so a change to an issuer or a Secret finds the
// relays that use it without listing them all.
const (
	relayIssuerIndex = "spec.tls.issuerRef"
	relaySecretIndex = "spec.tls.secretName"
)

// RelayReconciler turns an SmtpRelay into its Deployment, Service,
// Certificate, ConfigMap, ServiceAccount, Role, RoleBinding and
// PodDisruptionBudget, and reports in status what still keeps it from
// serving.
type RelayReconciler struct {
	// Client, Scheme and Recorder default to the manager's.
	Client   client.Client
	Scheme   *runtime.Scheme
	Recorder events.EventRecorder
	// Reader reads objects the relay does not own yet, uncached (default:
	// the manager's API reader): only their metadata, only to refuse to
	// take them over, so no informer holds every Service of the cluster.
	Reader client.Reader
	// Secrets reads the operator's own Secrets, its shards among them
	// (default: a cache of its own).
	Secrets *OwnedSecrets
	// Options are passed to RenderRelay.
	Options render.Options
	// CertManagerPoll is how often to look for cert-manager while it is
	// missing (default 30s).
	CertManagerPoll time.Duration

	// certManager is set once cert-manager's CRDs are served and watched.
	certManager atomic.Bool
	// applied is what was last applied of each object (applyIfChanged).
	applied appliedObjects
}

// The relay controller's permissions. The Role it creates for relay pods
// grants get/list/watch on secrets and configmaps; the API server only lets
// the operator create it because the operator holds those verbs itself
// (RBAC's escalation check).
// +kubebuilder:rbac:groups=mailfleet.io,resources=smtprelays,verbs=get;list;watch
// +kubebuilder:rbac:groups=mailfleet.io,resources=smtprelays/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=mailfleet.io,resources=smtprelays/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups="",resources=services;configmaps;serviceaccounts,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups=cert-manager.io,resources=certificates,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=cert-manager.io,resources=issuers;clusterissuers,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager registers the controller, its indexes and its watches;
// unset fields of r are taken from the manager.
func (r *RelayReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.Scheme == nil {
		r.Scheme = mgr.GetScheme()
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder(FieldManager)
	}
	if r.Reader == nil {
		r.Reader = mgr.GetAPIReader()
	}
	if r.Secrets == nil {
		var err error
		if r.Secrets, err = NewOwnedSecrets(mgr); err != nil {
			return err
		}
	}
	disco, err := discovery.NewDiscoveryClientForConfig(mgr.GetConfig())
	if err != nil {
		return fmt.Errorf("discovery client: %w", err)
	}
	served, err := certManagerServed(disco)
	if err != nil {
		return err
	}
	c, err := ctrl.NewControllerManagedBy(mgr).
		Named("smtprelay").
		// Status writes do not change the generation, so the controller
		// does not wake itself up.
		For(&v1.SmtpRelay{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// The Deployment's status feeds the relay's; so does the
		// Certificate's, watched once cert-manager is there
		// (watchForCertManager).
		Owns(&appsv1.Deployment{}).
		// For the rest, any change is drift to put back; metadata is
		// enough to notice it and keeps the cache small.
		Owns(&corev1.ConfigMap{}, builder.OnlyMetadata).
		Owns(&corev1.Service{}, builder.OnlyMetadata).
		Owns(&corev1.ServiceAccount{}, builder.OnlyMetadata).
		Owns(&rbacv1.Role{}, builder.OnlyMetadata).
		Owns(&rbacv1.RoleBinding{}, builder.OnlyMetadata).
		Owns(&policyv1.PodDisruptionBudget{}, builder.OnlyMetadata).
		// Only whether a Secret exists matters here: never cache Secret
		// data, but for the operator's own Secrets, which come from their
		// cache (the relay's shards; their account counts feed status).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.relaysForSecret), builder.OnlyMetadata).
		WatchesRawSource(source.Kind(r.Secrets.Cache, &corev1.Secret{}, r.ownSecretChanged())).
		Build(r)
	if err != nil {
		return err
	}
	if served {
		r.certManager.Store(true)
		return r.addCertManagerWatches(mgr, c)
	}
	return mgr.Add(manager.RunnableFunc(func(ctx context.Context) error { return r.watchForCertManager(ctx, mgr, c, disco) }))
}

// Reconcile renders the relay, applies every object, then records in
// status whether the relay can serve and, if not, why.
func (r *RelayReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	relay := &v1.SmtpRelay{}
	if err := r.Client.Get(ctx, req.NamespacedName, relay); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !relay.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil // the garbage collector removes what the relay owns
	}
	orig := relay.DeepCopy()
	objs, stall, err := r.render(ctx, relay)
	if err != nil {
		return ctrl.Result{}, err
	}
	if stall != nil {
		return ctrl.Result{RequeueAfter: stall.recheck}, r.updateStatus(ctx, relay, orig, stall.verdict)
	}
	missing, err := r.stampSecretVersions(ctx, relay, objs)
	if err != nil {
		return ctrl.Result{}, err
	}
	if stall, err = r.checkOwnership(ctx, relay, objs); err != nil {
		return ctrl.Result{}, err
	}
	if stall != nil {
		return ctrl.Result{RequeueAfter: stall.recheck}, r.updateStatus(ctx, relay, orig, stall.verdict)
	}
	if err := r.applyAll(ctx, relay, objs); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.pruneCertificate(ctx, relay, objs); err != nil {
		return ctrl.Result{}, err
	}
	verdict, err := r.observeStatus(ctx, relay, objs, missing)
	if err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, r.updateStatus(ctx, relay, orig, verdict)
}

// stall is a relay that cannot go on until something changes: its verdict,
// and when to look again if no watch will say (0: a watch will).
type stall struct {
	verdict relayVerdict
	recheck time.Duration
}

// render settles the relay's stream and renders its objects, or says why
// it cannot: another relay has the stream, cert-manager is missing, or the
// spec cannot become valid objects.
func (r *RelayReconciler) render(ctx context.Context, relay *v1.SmtpRelay) (*render.RelayObjects, *stall, error) {
	conflict, err := r.chooseStream(ctx, relay)
	if err != nil {
		return nil, nil, err
	}
	if conflict != "" {
		// Nothing tells this relay when the other one lets go of the stream.
		return nil, &stall{relayVerdict{reason: v1.ReasonStreamConflict, message: conflict}, nameConflictRecheck}, nil
	}
	if relay.Spec.TLS.IssuerRef != nil && !r.certManager.Load() {
		return nil, &stall{relayVerdict{reason: v1.ReasonCertManagerMissing,
			message: "spec.tls.issuerRef needs cert-manager, whose CRDs are not installed; install cert-manager (the operator picks it up without a restart) or set spec.tls.secretName to a TLS Secret of your own"},
			r.certManagerPoll()}, nil
	}
	objs, err := render.Relay(relay, r.Options)
	if err != nil {
		// Retrying cannot help; the spec has to change, and that triggers
		// a new reconcile.
		ctrl.LoggerFrom(ctx).Info("relay cannot be rendered", "error", err.Error())
		reason := v1.ReasonRenderFailed
		switch {
		case errors.Is(err, render.ErrImageNotAllowed):
			reason = v1.ReasonImageNotAllowed
		case errors.Is(err, render.ErrCertificateNotAllowed):
			reason = v1.ReasonCertificateNotAllowed
		}
		return nil, &stall{verdict: relayVerdict{reason: reason, message: err.Error()}}, nil
	}
	return objs, nil, nil
}

// checkOwnership refuses to take over what someone else made: server-side
// apply with force would, and the garbage collector would delete it with
// the relay. No watch sees the other object go away, so the caller looks
// again later.
func (r *RelayReconciler) checkOwnership(ctx context.Context, relay *v1.SmtpRelay, objs *render.RelayObjects) (*stall, error) {
	foreign, err := r.foreignObject(ctx, relay, objs)
	if err != nil || foreign == "" {
		return nil, err
	}
	return &stall{relayVerdict{reason: v1.ReasonNameConflict,
		message: foreign + " already exists and is not this relay's; rename the SmtpRelay or remove that object"}, nameConflictRecheck}, nil
}

// observeStatus fills the relay's status from what the cluster now holds
// and judges its readiness.
func (r *RelayReconciler) observeStatus(ctx context.Context, relay *v1.SmtpRelay, objs *render.RelayObjects, missing *render.SecretRef) (relayVerdict, error) {
	obs, err := r.observe(ctx, relay, objs)
	if err != nil {
		return relayVerdict{}, err
	}
	obs.missingRef = missing
	relay.Status.ReadyReplicas = obs.readyReplicas
	relay.Status.Replicas = objs.Deployment.Status.Replicas
	relay.Status.Selector = labels.SelectorFromSet(render.Selector(relay)).String()
	relay.Status.Endpoint = render.Endpoint(relay)
	if relay.Status.Accounts, err = r.publishedAccounts(ctx, relay); err != nil {
		return relayVerdict{}, err
	}
	return relayReadiness(obs), nil
}

// nameConflictRecheck is how soon a relay blocked by someone else's object
// looks again.
const nameConflictRecheck = 30 * time.Second

// foreignObject names ("Service db") the first object the relay would write
// that exists without the relay as its controller, or returns "". The
// cache holds only what the operator made, so an object it shows with the
// relay as controller is the relay's; any other is looked up in the API
// server.
func (r *RelayReconciler) foreignObject(ctx context.Context, relay *v1.SmtpRelay, objs *render.RelayObjects) (string, error) {
	for _, obj := range objs.List() {
		cached, err := r.cachedRelayObject(ctx, obj)
		if err != nil {
			return "", err
		}
		if cached != nil && metav1.IsControlledBy(cached, relay) {
			continue
		}
		gvk, err := apiutil.GVKForObject(obj, r.Scheme)
		if err != nil {
			return "", fmt.Errorf("kind of %T: %w", obj, err)
		}
		existing := &metav1.PartialObjectMetadata{}
		existing.SetGroupVersionKind(gvk)
		err = r.Reader.Get(ctx, client.ObjectKeyFromObject(obj), existing)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("read %s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		if !metav1.IsControlledBy(existing, relay) {
			return gvk.Kind + " " + obj.GetName(), nil
		}
	}
	return "", nil
}

// applyAll applies the rendered objects, each owned by the relay, those
// that changed (applyIfChanged).
func (r *RelayReconciler) applyAll(ctx context.Context, relay *v1.SmtpRelay, objs *render.RelayObjects) error {
	for _, obj := range objs.List() {
		if err := controllerutil.SetControllerReference(relay, obj, r.Scheme); err != nil {
			return fmt.Errorf("own %T %s: %w", obj, obj.GetName(), err)
		}
		if err := r.applyIfChanged(ctx, obj); err != nil {
			return err
		}
	}
	return nil
}

// pruneCertificate deletes the relay's Certificate once the relay has
// switched to its own Secret: server-side apply only ever adds.
func (r *RelayReconciler) pruneCertificate(ctx context.Context, relay *v1.SmtpRelay, objs *render.RelayObjects) error {
	if objs.Certificate != nil || !r.certManager.Load() {
		return nil // without cert-manager there is no Certificate to prune
	}
	cert := &certmanagerv1.Certificate{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: relay.Namespace, Name: relay.Name}, cert)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get certificate %s: %w", relay.Name, err)
	}
	if !metav1.IsControlledBy(cert, relay) {
		return nil // someone else's; leave it alone
	}
	if err := r.Client.Delete(ctx, cert); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("delete certificate %s: %w", cert.Name, err)
	}
	ctrl.LoggerFrom(ctx).Info("deleted certificate: the relay now uses spec.tls.secretName", "certificate", cert.Name)
	return nil
}

// relayObservation is what the reconciler saw of the things a relay
// depends on. A zero value means "all present"; readiness is decided from
// it by the pure relayReadiness.
type relayObservation struct {
	// missingIssuer describes the referenced issuer when it does not exist.
	missingIssuer string
	// certificate is the applied Certificate, nil without cert-manager.
	certificate *certmanagerv1.Certificate
	// missingSecret names spec.tls.secretName when it does not exist.
	missingSecret string
	// fleetBudget is whether budgets are counted across the fleet (the
	// rate-limit sidecar) rather than per pod.
	fleetBudget bool
	// missingRef is another Secret the pods mount that does not exist.
	missingRef    *render.SecretRef
	replicas      int32
	readyReplicas int32
	// rollout says what a rolling update still waits for; empty once every
	// pod runs the current template.
	rollout string
}

func (r *RelayReconciler) observe(ctx context.Context, relay *v1.SmtpRelay, objs *render.RelayObjects) (relayObservation, error) {
	obs := relayObservation{
		certificate:   objs.Certificate,
		replicas:      render.Replicas(relay),
		readyReplicas: objs.Deployment.Status.ReadyReplicas,
		fleetBudget:   relay.Spec.RateLimit != nil,
		rollout:       rolloutPending(objs.Deployment, render.Replicas(relay)),
	}
	if ref := relay.Spec.TLS.IssuerRef; ref != nil {
		found, err := r.issuerExists(ctx, relay.Namespace, ref)
		if err != nil {
			return obs, err
		}
		if !found {
			obs.missingIssuer = describeIssuer(relay.Namespace, ref)
		}
		return obs, nil
	}
	name := relay.Spec.TLS.SecretName
	found, err := r.secretExists(ctx, relay.Namespace, name)
	if err != nil {
		return obs, err
	}
	if !found {
		obs.missingSecret = name
	}
	return obs, nil
}

// issuerExists looks up cert-manager's own issuer kinds. Issuers of other
// groups (external issuers) are not known to the operator; the
// Certificate's Ready condition speaks for them.
func (r *RelayReconciler) issuerExists(ctx context.Context, ns string, ref *v1.IssuerReference) (bool, error) {
	if render.IssuerRefGroup(ref) != render.CertManagerGroup {
		return true, nil
	}
	var obj client.Object = &certmanagerv1.Issuer{}
	key := types.NamespacedName{Namespace: ns, Name: ref.Name}
	if render.IssuerRefKind(ref) == render.ClusterIssuerKind {
		obj, key.Namespace = &certmanagerv1.ClusterIssuer{}, ""
	}
	err := r.Client.Get(ctx, key, obj)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get %s %s: %w", render.IssuerRefKind(ref), ref.Name, err)
	}
	return true, nil
}

// secretExists reads only the Secret's metadata (from the metadata cache
// the Secret watch fills).
func (r *RelayReconciler) secretExists(ctx context.Context, ns, name string) (bool, error) {
	version, err := r.secretVersion(ctx, ns, name)
	return version != "", err
}

// secretVersion is the Secret's resourceVersion, "" when it does not exist.
func (r *RelayReconciler) secretVersion(ctx context.Context, ns, name string) (string, error) {
	m, err := r.Secrets.metadata(ctx, types.NamespacedName{Namespace: ns, Name: name})
	if err != nil || m == nil {
		return "", err
	}
	return m.ResourceVersion, nil
}

// stampSecretVersions annotates the pod template with a digest of the
// versions of the Secrets the pods read once at start (queue, smarthost and
// Redis credentials), so that rotating one rolls the pods onto it; the TLS
// Secret is left out because the relay reloads its certificate live. It
// returns the first referenced Secret that does not exist.
func (r *RelayReconciler) stampSecretVersions(ctx context.Context, relay *v1.SmtpRelay, objs *render.RelayObjects) (*render.SecretRef, error) {
	refs := render.ReferencedSecrets(relay)
	if len(refs) == 0 {
		return nil, nil
	}
	h := sha256.New()
	var missing *render.SecretRef
	for _, ref := range refs {
		version, err := r.secretVersion(ctx, relay.Namespace, ref.Name)
		if err != nil {
			return nil, err
		}
		if version == "" && missing == nil {
			missing = &ref
		}
		fmt.Fprintf(h, "%s=%s\n", ref.Name, version)
	}
	objs.Deployment.Spec.Template.Annotations[render.AnnotationSecretsDigest] = hex.EncodeToString(h.Sum(nil))
	return missing, nil
}

func describeIssuer(ns string, ref *v1.IssuerReference) string {
	if render.IssuerRefKind(ref) == render.ClusterIssuerKind {
		return fmt.Sprintf("ClusterIssuer %q", ref.Name)
	}
	return fmt.Sprintf("Issuer %q in namespace %q", ref.Name, ns)
}

// relayVerdict is the Ready condition to record.
type relayVerdict struct {
	ready           bool
	reason, message string
}

// relayReadiness decides the Ready condition. The first missing piece in
// the order a person would fix them wins: the TLS source, then the pods.
func relayReadiness(obs relayObservation) relayVerdict {
	switch {
	case obs.missingIssuer != "":
		return relayVerdict{reason: v1.ReasonIssuerNotFound,
			message: obs.missingIssuer + " does not exist; create it or change spec.tls.issuerRef"}
	case obs.certificate != nil && !certificateReady(obs.certificate):
		return relayVerdict{reason: v1.ReasonCertificateNotReady,
			message: fmt.Sprintf("Certificate %q is not ready yet%s", obs.certificate.Name, certificateDetail(obs.certificate))}
	case obs.missingSecret != "":
		return relayVerdict{reason: v1.ReasonTLSSecretNotFound,
			message: fmt.Sprintf("TLS Secret %q (spec.tls.secretName) does not exist in the relay's namespace", obs.missingSecret)}
	case obs.missingRef != nil:
		return relayVerdict{reason: v1.ReasonSecretNotFound,
			message: fmt.Sprintf("Secret %q (%s) does not exist in the relay's namespace; the relay pods cannot start without it", obs.missingRef.Name, obs.missingRef.Field)}
	case obs.readyReplicas < obs.replicas:
		return relayVerdict{reason: v1.ReasonReplicasNotReady,
			message: fmt.Sprintf("%d of %d relay pods are ready", obs.readyReplicas, obs.replicas)}
	case obs.rollout != "":
		return relayVerdict{reason: v1.ReasonReplicasNotReady, message: obs.rollout}
	}
	msg := fmt.Sprintf("%d of %d relay pods are ready", obs.readyReplicas, obs.replicas)
	if !obs.fleetBudget && obs.replicas > 1 {
		msg += fmt.Sprintf("; without spec.rateLimit each pod admits 1/%d of every account's budget", obs.replicas)
	}
	return relayVerdict{ready: true, reason: v1.ReasonReady, message: msg}
}

// rolloutPending says what the relay's Deployment still waits for before
// every pod runs its current template, as `kubectl rollout status` judges
// it, or "" when the rollout is complete. Counting ready pods alone said
// Ready in the middle of a rolling update (a real cluster showed it: three
// pods, two of the old template), so `kubectl wait --for=condition=Ready`
// returned while pods with the previous configuration still took mail.
func rolloutPending(d *appsv1.Deployment, want int32) string {
	st := d.Status
	switch {
	case st.ObservedGeneration < d.Generation:
		return "rolling out: the Deployment controller has not seen the new pod template yet"
	case st.UpdatedReplicas < want:
		return fmt.Sprintf("rolling out: %d of %d relay pods run the current template", st.UpdatedReplicas, want)
	case st.Replicas > st.UpdatedReplicas:
		return fmt.Sprintf("rolling out: %d relay pods of the previous template still running", st.Replicas-st.UpdatedReplicas)
	case st.AvailableReplicas < st.UpdatedReplicas:
		return fmt.Sprintf("rolling out: %d of %d updated relay pods available", st.AvailableReplicas, st.UpdatedReplicas)
	}
	return ""
}

func certificateCondition(cert *certmanagerv1.Certificate) *certmanagerv1.CertificateCondition {
	for i := range cert.Status.Conditions {
		if cert.Status.Conditions[i].Type == certmanagerv1.CertificateConditionReady {
			return &cert.Status.Conditions[i]
		}
	}
	return nil
}

func certificateReady(cert *certmanagerv1.Certificate) bool {
	c := certificateCondition(cert)
	return c != nil && c.Status == cmmeta.ConditionTrue
}

// certificateDetail passes on what cert-manager said, if anything.
func certificateDetail(cert *certmanagerv1.Certificate) string {
	if c := certificateCondition(cert); c != nil && c.Message != "" {
		return ": " + c.Message
	}
	return ""
}

// updateStatus records the verdict and writes status only when it changed;
// a change of reason is also an event.
func (r *RelayReconciler) updateStatus(ctx context.Context, relay, orig *v1.SmtpRelay, v relayVerdict) error {
	relay.Status.ObservedGeneration = relay.Generation
	setReady(&relay.Status.Conditions, relay.Generation, v.ready, v.reason, v.message)
	changed, err := patchStatus(ctx, r.Client, relay, orig, func(r *v1.SmtpRelay) any { return r.Status })
	if !changed {
		return client.IgnoreNotFound(err)
	}
	if prev := meta.FindStatusCondition(orig.Status.Conditions, v1.ConditionReady); prev == nil || prev.Reason != v.reason {
		r.recordEvent(relay, v)
	}
	return nil
}

// recordEvent tells a person what they must fix (the stalled reasons, and
// a Secret the pods mount that does not exist yet), and when the relay
// becomes ready. Progress (certificate being issued, pods starting) is in
// status only: it fixes itself.
func (r *RelayReconciler) recordEvent(relay *v1.SmtpRelay, v relayVerdict) {
	switch {
	case stalledReasons[v.reason] || v.reason == v1.ReasonSecretNotFound:
		r.Recorder.Eventf(relay, nil, corev1.EventTypeWarning, v.reason, "Reconcile", "%s", v.message)
	case v.reason == v1.ReasonReady:
		r.Recorder.Eventf(relay, nil, corev1.EventTypeNormal, v.reason, "Reconcile", "%s", v.message)
	}
}

func (r *RelayReconciler) relaysForIssuer(ctx context.Context, obj client.Object) []reconcile.Request {
	return r.relaysMatching(ctx, client.InNamespace(obj.GetNamespace()), client.MatchingFields{relayIssuerIndex: render.IssuerKind + "/" + obj.GetName()})
}

func (r *RelayReconciler) relaysForClusterIssuer(ctx context.Context, obj client.Object) []reconcile.Request {
	return r.relaysMatching(ctx, client.MatchingFields{relayIssuerIndex: render.ClusterIssuerKind + "/" + obj.GetName()})
}

// publishedAccounts is how many accounts the relay's credentials shards
// publish: the accounts its pods accept.
func (r *RelayReconciler) publishedAccounts(ctx context.Context, relay *v1.SmtpRelay) (int32, error) {
	var shards corev1.SecretList
	if err := r.Secrets.List(ctx, &shards, client.InNamespace(relay.Namespace),
		client.MatchingLabels{wire.ShardLabel: relay.Name}, client.UnsafeDisableDeepCopy); err != nil {
		return 0, fmt.Errorf("list credentials shards of relay %s: %w", relay.Name, err)
	}
	var n int32
	for _, s := range shards.Items {
		if !metav1.IsControlledBy(&s, relay) {
			continue
		}
		c, _ := strconv.Atoi(s.Annotations[render.AnnotationShardAccounts])
		n += int32(c)
	}
	return n, nil
}

// accountsCountDelay is how long a relay waits after one of its shards
// changed before its status counts their accounts again. During a bulk
// creation of accounts the publisher writes a shard several times a
// second in all, and a relay reconciled for each write (rendering its
// objects, patching its status) was some 900 reconciles and status writes
// in a 10,000-account run, all to move a count; the writes that come
// within the delay wait together.
const accountsCountDelay = 2 * time.Second

// ownSecretChanged maps a change of one of the operator's own Secrets to
// the relays it concerns: a shard to its relay, after accountsCountDelay;
// any other to the relays that name it, at once.
func (r *RelayReconciler) ownSecretChanged() handler.TypedEventHandler[*corev1.Secret, reconcile.Request] {
	enqueue := func(ctx context.Context, s *corev1.Secret, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		if relay, ok := s.Labels[wire.ShardLabel]; ok {
			// A request already waiting keeps its earlier time.
			q.AddAfter(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: s.Namespace, Name: relay}}, accountsCountDelay)
			return
		}
		for _, req := range r.relaysForSecret(ctx, s) {
			q.Add(req)
		}
	}
	type queue = workqueue.TypedRateLimitingInterface[reconcile.Request]
	return handler.TypedFuncs[*corev1.Secret, reconcile.Request]{
		CreateFunc: func(ctx context.Context, e event.TypedCreateEvent[*corev1.Secret], q queue) {
			enqueue(ctx, e.Object, q)
		},
		UpdateFunc: func(ctx context.Context, e event.TypedUpdateEvent[*corev1.Secret], q queue) {
			enqueue(ctx, e.ObjectOld, q)
			enqueue(ctx, e.ObjectNew, q)
		},
		DeleteFunc: func(ctx context.Context, e event.TypedDeleteEvent[*corev1.Secret], q queue) {
			enqueue(ctx, e.Object, q)
		},
		GenericFunc: func(ctx context.Context, e event.TypedGenericEvent[*corev1.Secret], q queue) {
			enqueue(ctx, e.Object, q)
		},
	}
}

func (r *RelayReconciler) relaysForSecret(ctx context.Context, obj client.Object) []reconcile.Request {
	// A shard's account count feeds the relay's status.accounts.
	if relay, ok := obj.GetLabels()[wire.ShardLabel]; ok {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: obj.GetNamespace(), Name: relay}}}
	}
	return r.relaysMatching(ctx, client.InNamespace(obj.GetNamespace()), client.MatchingFields{relaySecretIndex: obj.GetName()})
}

func (r *RelayReconciler) relaysMatching(ctx context.Context, opts ...client.ListOption) []reconcile.Request {
	var list v1.SmtpRelayList
	if err := r.Client.List(ctx, &list, opts...); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "list relays to requeue")
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for _, relay := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&relay)})
	}
	return reqs
}
