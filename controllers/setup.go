package controllers

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
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
	// One cache of the operator's own Secrets serves the account
	// controller and the publisher.
	secrets, err := NewOwnedSecrets(mgr)
	if err != nil {
		return err
	}
	setups := []struct {
		name  string
		setup func(ctrl.Manager) error
	}{
		{"smtprelay", (&RelayReconciler{Options: opts}).SetupWithManager},
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
// here as metadata only (the controllers watch them that way); the data of
// the operator's own Secrets is in a cache of their own (NewOwnedSecrets).
// Managed fields are dropped from everything, since nothing reads them.
func CacheOptions() cache.Options {
	mine := cache.ByObject{Label: labels.SelectorFromSet(labels.Set{render.LabelManagedBy: render.ManagedByValue})}
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
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
