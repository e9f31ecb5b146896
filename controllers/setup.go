package controllers

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mailfleet/mailfleet/controllers/dnscheck"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// DomainOptions configure the SmtpDomain controller.
type DomainOptions struct {
	// DNS looks sender domains' records up.
	DNS dnscheck.Resolver
	// KeyNamespace keeps the domains' keys: the operator's own namespace.
	// Empty (with DNS nil): no SmtpDomain controller, and no domain is
	// ever verified.
	KeyNamespace string
	// SPFInclude is what the SPF suggestion includes; empty: none.
	SPFInclude string
	// ExternalDNSDomains are the domains (with their subdomains) whose
	// SmtpDomains may have their records written into DNSEndpoints.
	ExternalDNSDomains []string
	// RecheckPending and RecheckVerified: how often records are looked
	// up (defaults DefaultDomainRecheckPending and ...Verified).
	RecheckPending, RecheckVerified time.Duration
}

// Setup registers every mailfleet controller with mgr.
func Setup(mgr ctrl.Manager, opts render.Options, domains DomainOptions) error {
	if err := IndexFields(context.Background(), mgr); err != nil {
		return err
	}
	// One cache of the operator's own Secrets serves every controller.
	secrets, err := NewOwnedSecrets(mgr)
	if err != nil {
		return err
	}
	setups := []struct {
		name  string
		setup func(ctrl.Manager) error
	}{
		{"smtprelay", (&RelayReconciler{Options: opts, Secrets: secrets}).SetupWithManager},
		{"smtpaccount", (&AccountReconciler{Secrets: secrets, DomainKeyNamespace: domains.KeyNamespace}).SetupWithManager},
		{"smtplabel", (&LabelReconciler{}).SetupWithManager},
		{"smtpsuppression", (&SuppressionReconciler{}).SetupWithManager},
		{"credentials", (&CredentialsPublisher{Secrets: secrets, DomainKeyNamespace: domains.KeyNamespace}).SetupWithManager},
	}
	if domains.DNS != nil && domains.KeyNamespace != "" {
		setups = append(setups, struct {
			name  string
			setup func(ctrl.Manager) error
		}{"smtpdomain", (&DomainReconciler{Secrets: secrets, DNS: domains.DNS, KeyNamespace: domains.KeyNamespace, SPFInclude: domains.SPFInclude,
			ExternalDNSDomains: domains.ExternalDNSDomains,
			RecheckPending:     domains.RecheckPending, RecheckVerified: domains.RecheckVerified}).SetupWithManager})
	}
	for _, s := range setups {
		if err := s.setup(mgr); err != nil {
			return fmt.Errorf("set up %s controller: %w", s.name, err)
		}
	}
	return nil
}

// CacheOptions are the manager's cache options the controllers are built
// for. The kinds a relay owns are cached only when the operator made them
// (its managed-by label): a cluster's every Deployment, ConfigMap, Service,
// ServiceAccount, Role, RoleBinding and PodDisruptionBudget would otherwise
// sit in the operator's memory, at any tenant's whim. Secrets are cached
// here as metadata only (the controllers watch them that way), and only
// those the operator did not make: its own are in a cache of their own,
// with the data it reads (NewOwnedSecrets), and 10,000 accounts' worth of
// their metadata a second time would be some 10 MiB of heap for nothing.
// Managed fields are dropped from everything, since nothing reads them.
func CacheOptions() cache.Options {
	mine := cache.ByObject{Label: labels.SelectorFromSet(labels.Set{render.LabelManagedBy: render.ManagedByValue})}
	notMine, err := labels.NewRequirement(render.LabelManagedBy, selection.NotEquals, []string{render.ManagedByValue})
	if err != nil {
		panic(err) // a constant requirement
	}
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}:                {Label: labels.NewSelector().Add(*notMine)},
			&appsv1.Deployment{}:            mine,
			&corev1.ConfigMap{}:             mine,
			&corev1.Service{}:               mine,
			&corev1.ServiceAccount{}:        mine,
			&rbacv1.Role{}:                  mine,
			&rbacv1.RoleBinding{}:           mine,
			&policyv1.PodDisruptionBudget{}: mine,
		},
	}
}

// MapperProvider is the manager's REST mapper the controllers are built
// for: controller-runtime's, remembering each mapping it finds. The
// metadata client, through which every status is written (patchStatus),
// asks the mapper on each request where the typed client keeps its own
// answers, and each answer cost some 7 KiB of garbage: a twentieth of the
// operator's allocations at 10,000 accounts. A kind's resource and scope do
// not change while it is served; a kind not yet served is asked again
// each time, so a CRD installed later is found.
func MapperProvider(cfg *rest.Config, httpClient *http.Client) (meta.RESTMapper, error) {
	m, err := apiutil.NewDynamicRESTMapper(cfg, httpClient)
	if err != nil {
		return nil, err
	}
	return &rememberedMappings{RESTMapper: m}, nil
}

// rememberedMappings answers RESTMapping from the mappings found before. A
// mapping found stays: a CRD that changes its scope or drops a served
// version needs the operator restarted (controller-runtime's own mapper
// keeps what it found too).
type rememberedMappings struct {
	meta.RESTMapper
	found sync.Map // mappingQuestion → meta.RESTMapping
}

type mappingQuestion struct {
	kind     schema.GroupKind
	versions string
}

func (r *rememberedMappings) RESTMapping(gk schema.GroupKind, versions ...string) (*meta.RESTMapping, error) {
	q := mappingQuestion{gk, strings.Join(versions, ",")}
	if m, ok := r.found.Load(q); ok {
		mapping := m.(meta.RESTMapping)
		return &mapping, nil
	}
	mapping, err := r.RESTMapper.RESTMapping(gk, versions...)
	if err != nil {
		return nil, err
	}
	r.found.Store(q, *mapping)
	return mapping, nil
}
