package controllers

import (
	"context"
	"fmt"
	"time"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/discovery"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
)

// defaultCertManagerPoll is how often the operator looks for cert-manager
// while it is not installed, and how often a relay waiting for it is
// reconciled again.
const defaultCertManagerPoll = 30 * time.Second

// certManagerResources are the cert-manager kinds the relay controller
// reads or writes; all must be served.
var certManagerResources = []string{"certificates", "issuers", "clusterissuers"}

// watchForCertManager runs until ctx ends: it adds the cert-manager watches
// as soon as cert-manager's CRDs are served, so the operator starts, and
// serves relays with their own TLS Secret, on a cluster without
// cert-manager, and picks cert-manager up when it is installed later
// without a restart.
func (r *RelayReconciler) watchForCertManager(ctx context.Context, mgr ctrl.Manager, c controller.Controller, disco discovery.DiscoveryInterface) error {
	tick := time.NewTicker(r.certManagerPoll())
	defer tick.Stop()
	for {
		served, err := certManagerServed(disco)
		if err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "looking for cert-manager")
		}
		if served {
			if err := r.addCertManagerWatches(mgr, c); err != nil {
				return err
			}
			r.certManager.Store(true)
			ctrl.LoggerFrom(ctx).Info("cert-manager found: relays with spec.tls.issuerRef get Certificates")
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func certManagerServed(disco discovery.DiscoveryInterface) (bool, error) {
	list, err := disco.ServerResourcesForGroupVersion(certmanagerv1.SchemeGroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discover %s: %w", certmanagerv1.SchemeGroupVersion, err)
	}
	found := map[string]bool{}
	for _, res := range list.APIResources {
		found[res.Name] = true
	}
	for _, name := range certManagerResources {
		if !found[name] {
			return false, nil
		}
	}
	return true, nil
}

// addCertManagerWatches is what For/Owns/Watches would have registered: the
// relay's Certificate feeds its status, and an issuer appearing wakes the
// relays that name it.
func (r *RelayReconciler) addCertManagerWatches(mgr ctrl.Manager, c controller.Controller) error {
	cache := mgr.GetCache()
	sources := []source.TypedSource[ctrl.Request]{
		source.Kind(cache, &certmanagerv1.Certificate{}, handler.TypedEnqueueRequestForOwner[*certmanagerv1.Certificate](
			mgr.GetScheme(), mgr.GetRESTMapper(), &v1.SmtpRelay{}, handler.OnlyControllerOwner())),
		source.Kind(cache, &certmanagerv1.Issuer{}, handler.TypedEnqueueRequestsFromMapFunc(func(ctx context.Context, o *certmanagerv1.Issuer) []ctrl.Request {
			return r.relaysForIssuer(ctx, o)
		})),
		source.Kind(cache, &certmanagerv1.ClusterIssuer{}, handler.TypedEnqueueRequestsFromMapFunc(func(ctx context.Context, o *certmanagerv1.ClusterIssuer) []ctrl.Request {
			return r.relaysForClusterIssuer(ctx, o)
		})),
	}
	for _, src := range sources {
		if err := c.Watch(src); err != nil {
			return fmt.Errorf("watch cert-manager resources: %w", err)
		}
	}
	return nil
}

func (r *RelayReconciler) certManagerPoll() time.Duration {
	if r.CertManagerPoll > 0 {
		return r.CertManagerPoll
	}
	return defaultCertManagerPoll
}
