package envtestkit

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// MarkDeploymentReady plays the Deployment controller and the kubelet,
// which envtest does not run: it reports every replica of the Deployment's
// current generation updated, ready and available.
func MarkDeploymentReady(ctx context.Context, c client.Client, namespace, name string) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d := &appsv1.Deployment{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, d); err != nil {
			return err
		}
		n := ptr.Deref(d.Spec.Replicas, 1)
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation,
			Replicas:           n, UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n,
		}
		return c.Status().Update(ctx, d)
	})
	if err != nil {
		return fmt.Errorf("mark deployment %s/%s ready: %w", namespace, name, err)
	}
	return nil
}
