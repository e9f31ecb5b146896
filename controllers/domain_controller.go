package controllers

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/dnscheck"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// How often an SmtpDomain's records are looked up again: soon while a
// tenant is publishing them, rarely once they are there (a record that
// vanishes later stops the domain's mail at the next check).
const (
	DefaultDomainRecheckPending  = time.Minute
	DefaultDomainRecheckVerified = time.Hour
)

// DomainReconciler keeps an SmtpDomain's DKIM keys, in a Secret of the
// operator's namespace, and its status: the records to publish and what
// DNS shows of them.
type DomainReconciler struct {
	client.Client
	Secrets  *OwnedSecrets
	Recorder events.EventRecorder
	// DNS looks the records up.
	DNS dnscheck.Resolver
	// KeyNamespace holds the key Secrets: the operator's, where tenants
	// write nothing.
	KeyNamespace string
	// SPFInclude is the domain the SPF suggestion includes (the relays'
	// own SPF record); empty: no SPF suggestion.
	SPFInclude string
	// ExternalDNSDomains are the domains (and their subdomains) whose
	// records the operator writes into DNSEndpoints for external-dns.
	ExternalDNSDomains []string
	// RecheckPending and RecheckVerified default to the constants above.
	RecheckPending, RecheckVerified time.Duration
	// Now and GenerateKey default to time.Now and real keys.
	Now         func() time.Time
	GenerateKey keyGen
}

// +kubebuilder:rbac:groups=mailfleet.io,resources=smtpdomains,verbs=get;list;watch
// +kubebuilder:rbac:groups=mailfleet.io,resources=smtpdomains/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=externaldns.k8s.io,resources=dnsendpoints,verbs=get;create;patch

// SetupWithManager registers the controller. Unset fields are taken from
// the manager or defaulted.
func (r *DomainReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder(FieldManager)
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.GenerateKey == nil {
		r.GenerateKey = generateKey
	}
	if r.RecheckPending <= 0 {
		r.RecheckPending = DefaultDomainRecheckPending
	}
	if r.RecheckVerified <= 0 {
		r.RecheckVerified = DefaultDomainRecheckVerified
	}
	if r.DNS == nil || r.KeyNamespace == "" {
		return fmt.Errorf("smtpdomain controller: a resolver and a key namespace are required")
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("smtpdomain").
		WithOptions(controller.Options{MaxConcurrentReconciles: 4}).
		For(&v1.SmtpDomain{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Complete(r)
}

// Reconcile makes or rotates the domain's keys, looks its records up and
// records what it found.
func (r *DomainReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	d := &v1.SmtpDomain{}
	if err := r.Get(ctx, req.NamespacedName, d); apierrors.IsNotFound(err) {
		return ctrl.Result{}, r.deleteKeys(ctx, req.NamespacedName)
	} else if err != nil {
		return ctrl.Result{}, err
	}
	if d.DeletionTimestamp != nil {
		return ctrl.Result{}, nil
	}
	keys, err := r.readKeys(ctx, d)
	if err != nil {
		return ctrl.Result{}, err
	}
	now := r.Now()
	wasVerified := keys.Verified
	changed, err := keys.prepare(d.Spec.DKIM, now, r.GenerateKey)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("keys of SmtpDomain %s: %w", req.NamespacedName, err)
	}
	l := &lookups{dns: r.DNS}
	l.run(ctx, keys, r.SPFInclude)
	if keys.advance(l.found, d.Spec.DKIM, now) || changed {
		if err := r.writeKeys(ctx, d, keys); err != nil {
			return ctrl.Result{}, r.writeStatus(ctx, d, keys, l, now, d.Status.DNSEndpoint, problem(v1.ReasonSecretWriteFailed,
				"the domain's key Secret %s/%s could not be written: %v", r.KeyNamespace, render.DomainKeySecretName(d.Namespace, d.Name), err))
		}
	}
	r.announce(d, wasVerified, keys)
	endpoint, published, err := r.publishWithExternalDNS(ctx, d, keys)
	if err != nil {
		return ctrl.Result{}, err
	}
	out := verification(keys, l)
	if published != nil && !keys.Verified {
		out = published
	}
	if err := r.writeStatus(ctx, d, keys, l, now, endpoint, out); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: r.recheckAfter(keys, d.Spec.DKIM, now)}, nil
}

// readKeys reads the domain's key Secret; none (or another domain's) is a
// fresh start.
func (r *DomainReconciler) readKeys(ctx context.Context, d *v1.SmtpDomain) (*domainKeys, error) {
	s, err := r.Secrets.read(ctx, types.NamespacedName{Namespace: r.KeyNamespace, Name: render.DomainKeySecretName(d.Namespace, d.Name)})
	if err != nil {
		return nil, err
	}
	var data []byte
	if s != nil {
		data = s.Data[render.SecretKeyDKIM]
	}
	return parseDomainKeys(data, d), nil
}

func (r *DomainReconciler) writeKeys(ctx context.Context, d *v1.SmtpDomain, keys *domainKeys) error {
	data, err := keys.marshal()
	if err != nil {
		return err
	}
	s := render.DomainKeySecret(r.KeyNamespace, d.Namespace, d.Name, data)
	if err := writeSecret(ctx, r.Client, s); err != nil {
		return err
	}
	r.Secrets.wrote(s)
	return nil
}

// deleteKeys deletes the key Secret of a deleted SmtpDomain: it has no
// owner reference to do it (an owner must be in the same namespace).
func (r *DomainReconciler) deleteKeys(ctx context.Context, domain types.NamespacedName) error {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: r.KeyNamespace, Name: render.DomainKeySecretName(domain.Namespace, domain.Name)}}
	if err := r.Delete(ctx, s); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete the keys of SmtpDomain %s: %w", domain, err)
	}
	r.Secrets.forget(client.ObjectKeyFromObject(s))
	return nil
}

// verification is the Verified condition's outcome.
func verification(keys *domainKeys, l *lookups) *readyOutcome {
	if keys.Verified {
		return &readyOutcome{ready: true, reason: v1.ReasonVerified,
			message: fmt.Sprintf("DNS publishes the keys of selector %s; accounts of this namespace send from %s and sign for it", signingSelector(keys), keys.Domain)}
	}
	var missing, mismatched []string
	for _, key := range keys.Keys {
		if key.State == v1.DKIMKeyRetiring {
			continue
		}
		name := wire.DKIMRecordName(key.Selector, keys.Domain)
		switch l.found[key.Selector] {
		case v1.DNSRecordMissing:
			missing = append(missing, name)
		case v1.DNSRecordMismatch:
			mismatched = append(mismatched, name)
		}
	}
	switch {
	case len(mismatched) > 0:
		return problem(v1.ReasonDKIMRecordMismatch, "the TXT record at %s holds another key; publish the value status.records gives", strings.Join(mismatched, ", "))
	case len(missing) > 0:
		return &readyOutcome{reason: v1.ReasonDKIMRecordMissing,
			message: fmt.Sprintf("publish the TXT record %s that status.records gives; the domain is checked again every few minutes", strings.Join(missing, ", "))}
	case l.failed != nil:
		return &readyOutcome{reason: v1.ReasonDNSLookupFailed, message: "DNS lookups failed: " + l.failed.Error()}
	}
	return &readyOutcome{reason: v1.ReasonDKIMRecordMissing, message: "waiting for the records to be looked up"}
}

func signingSelector(keys *domainKeys) string {
	for _, key := range keys.withState(v1.DKIMKeyActive) {
		if key.Algorithm == algRSA {
			return key.Selector
		}
	}
	return ""
}

// announce records the turns a person wants to hear of as Events.
func (r *DomainReconciler) announce(d *v1.SmtpDomain, wasVerified bool, keys *domainKeys) {
	before := d.Status.Selector
	switch {
	case keys.Verified && !wasVerified:
		r.Recorder.Eventf(d, nil, corev1.EventTypeNormal, v1.ReasonVerified, "Verify", "DNS publishes the DKIM key of selector %s", signingSelector(keys))
	case !keys.Verified && wasVerified:
		r.Recorder.Eventf(d, nil, corev1.EventTypeWarning, v1.ReasonDKIMRecordMissing, "Verify",
			"DNS no longer publishes the DKIM key of the signing selector; accounts stop sending from %s until it does", keys.Domain)
	}
	if now := signingSelector(keys); keys.Verified && before != "" && now != before {
		r.Recorder.Eventf(d, nil, corev1.EventTypeNormal, "KeyRotated", "Rotate", "signing switched from selector %s to %s", before, now)
	}
}

// writeStatus records keys, records and the conditions.
func (r *DomainReconciler) writeStatus(ctx context.Context, d *v1.SmtpDomain, keys *domainKeys, l *lookups, now time.Time, endpoint string, out *readyOutcome) error {
	next := d.Status.DeepCopy()
	next.DNSEndpoint = endpoint
	next.ObservedGeneration = d.Generation
	next.SecretName = r.KeyNamespace + "/" + render.DomainKeySecretName(d.Namespace, d.Name)
	next.Selector = ""
	if keys.Verified {
		next.Selector = signingSelector(keys)
	}
	next.Records = domainRecords(keys, l, r.SPFInclude)
	next.Keys = keyStatuses(keys)
	checked := metav1.NewTime(now.UTC().Truncate(time.Second))
	next.LastCheckedAt = &checked
	status := metav1.ConditionFalse
	if out.ready {
		status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&next.Conditions, metav1.Condition{Type: v1.ConditionVerified, Status: status,
		ObservedGeneration: d.Generation, Reason: out.reason, Message: out.message})
	setReady(&next.Conditions, d.Generation, out.ready, out.reason, out.message)
	orig := d.DeepCopy()
	d.Status = *next
	changed, err := patchStatus(ctx, r.Client, d, orig, func(x *v1.SmtpDomain) any { return x.Status })
	if changed {
		out.warnIfNew(r.Recorder, d, meta.FindStatusCondition(orig.Status.Conditions, v1.ConditionReady))
	}
	return err
}

func keyStatuses(keys *domainKeys) []v1.DKIMKeyStatus {
	var out []v1.DKIMKeyStatus
	for _, k := range keys.Keys {
		s := v1.DKIMKeyStatus{Selector: k.Selector, Algorithm: k.Algorithm, State: k.State, CreatedAt: metav1.NewTime(k.CreatedAt)}
		if k.ActiveSince != nil {
			t := metav1.NewTime(*k.ActiveSince)
			s.ActiveSince = &t
		}
		if k.RetireAt != nil {
			t := metav1.NewTime(*k.RetireAt)
			s.RetireAt = &t
		}
		out = append(out, s)
	}
	return out
}

// recheckAfter is when to look again: soon while keys wait for DNS, then
// rarely, and no later than the next retirement or rotation.
func (r *DomainReconciler) recheckAfter(keys *domainKeys, spec v1.DomainDKIM, now time.Time) time.Duration {
	after := r.RecheckVerified
	if !keys.Verified || len(keys.withState(v1.DKIMKeyPending)) > 0 {
		after = r.RecheckPending
	}
	for _, k := range keys.Keys {
		if k.RetireAt != nil {
			after = min(after, max(k.RetireAt.Sub(now), time.Second))
		}
		if k.State == v1.DKIMKeyActive && k.ActiveSince != nil && spec.RotateAfter != nil {
			after = min(after, max(k.ActiveSince.Add(spec.RotateAfter.Duration).Sub(now), time.Second))
		}
	}
	return after
}
