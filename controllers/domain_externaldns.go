package controllers

import (
	"context"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// dnsEndpointKind is external-dns's CRD source: records listed in a
// DNSEndpoint are published in the zones external-dns manages.
var dnsEndpointKind = schema.GroupVersionKind{Group: "externaldns.k8s.io", Version: "v1alpha1", Kind: "DNSEndpoint"}

// dnsEndpointTTL is the records' TTL: short, so that a rotation's new
// selector resolves soon after external-dns publishes it.
const dnsEndpointTTL = 300

// externalDNSAllowed reports whether the platform lets SmtpDomains of
// domain have their records published by external-dns: external-dns
// publishes whatever a DNSEndpoint lists in every zone it manages, so a
// tenant asking the operator to write one for a domain of the platform's
// zones would verify a domain it does not own. Only domains under an
// entry of allowed qualify (exact, or a subdomain).
func externalDNSAllowed(domain string, allowed []string) bool {
	for _, a := range allowed {
		a = wire.CanonicalDomain(strings.TrimPrefix(a, "*."))
		if domain == a || strings.HasSuffix(domain, "."+a) {
			return true
		}
	}
	return false
}

// publishWithExternalDNS writes the DNSEndpoint of the domain's DKIM
// records (those to publish and those still needed during a grace
// period), owned by the SmtpDomain. It returns the endpoint's name, or a
// problem a person must solve.
func (r *DomainReconciler) publishWithExternalDNS(ctx context.Context, d *v1.SmtpDomain, keys *domainKeys) (string, *readyOutcome, error) {
	if !d.Spec.ExternalDNS {
		return "", nil, nil
	}
	if !externalDNSAllowed(d.Spec.Domain, r.ExternalDNSDomains) {
		return "", problem(v1.ReasonExternalDNSNotAllowed,
			"spec.externalDNS: the operator does not publish records for %s (its --external-dns-domains does not cover it); publish them yourself, or ask the platform team", d.Spec.Domain), nil
	}
	ep := dnsEndpoint(d, keys)
	err := r.Patch(ctx, ep, client.Apply, client.FieldOwner(FieldManager), client.ForceOwnership)
	switch {
	case meta.IsNoMatchError(err):
		return "", problem(v1.ReasonExternalDNSMissing,
			"spec.externalDNS: external-dns's DNSEndpoint CRD (externaldns.k8s.io/v1alpha1) is not installed; install external-dns with its CRD source, or publish the records yourself"), nil
	case err != nil:
		return "", nil, fmt.Errorf("apply DNSEndpoint %s/%s: %w", ep.GetNamespace(), ep.GetName(), err)
	}
	return ep.GetName(), nil, nil
}

// dnsEndpoint is the DNSEndpoint listing every key's record but the
// retired ones.
func dnsEndpoint(d *v1.SmtpDomain, keys *domainKeys) *unstructured.Unstructured {
	var endpoints []any
	for _, k := range keys.Keys {
		endpoints = append(endpoints, map[string]any{
			"dnsName": wire.DKIMRecordName(k.Selector, keys.Domain), "recordType": "TXT",
			"recordTTL": int64(dnsEndpointTTL), "targets": []any{k.Record},
		})
	}
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(dnsEndpointKind)
	u.SetNamespace(d.Namespace)
	u.SetName(d.Name + "-dkim")
	u.SetLabels(map[string]string{render.LabelManagedBy: render.ManagedByValue, render.LabelDomain: d.Name})
	u.SetOwnerReferences([]metav1.OwnerReference{*metav1.NewControllerRef(d, v1.GroupVersion.WithKind("SmtpDomain"))})
	u.Object["spec"] = map[string]any{"endpoints": endpoints}
	return u
}
