package controllers

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mailfleet/mailfleet/controllers/render"
)

// Setup registers every mailfleet controller with mgr.
func Setup(mgr ctrl.Manager, opts render.Options) error {
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
		{"smtpaccount", (&AccountReconciler{Secrets: secrets}).SetupWithManager},
		{"smtplabel", (&LabelReconciler{}).SetupWithManager},
		{"credentials", (&CredentialsPublisher{Secrets: secrets}).SetupWithManager},
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
