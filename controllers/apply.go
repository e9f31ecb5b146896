package controllers

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
)

// The two ways a reconciler writes: applyObject for what it owns, and
// patchStatus for the status of what it reconciles. Reconcilers fetch, call
// a renderer (controllers/render), apply, and write status; nothing else
// writes.

// applyObject is how every reconciler writes an object it owns: server-side
// apply as FieldManager, taking over fields another manager set, reading
// back what the API server stored (status included) into obj. A
// resourceVersion on obj makes the apply conditional on the object being
// unchanged since it was read (the account's key is decided on a copy).
//
// controller-runtime v0.24 deprecates the client.Apply patch type in favour
// of Client.Apply with apply configurations. The render functions return
// typed objects (readable, and what the tests compare), so they are sent as
// unstructured apply configurations. The caveat that a typed object's zero
// values cannot be told from unset ones does not bite: Kubernetes types mark
// optional fields omitempty, the render functions set what they mean, and
// status, which the main resource ignores anyway, is left out.
func applyObject(ctx context.Context, c client.Client, scheme *runtime.Scheme, obj client.Object) error {
	gvk, err := apiutil.GVKForObject(obj, scheme)
	if err != nil {
		return fmt.Errorf("apply %T %s: %w", obj, obj.GetName(), err)
	}
	content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return fmt.Errorf("apply %s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	delete(content, "status")
	u := &unstructured.Unstructured{Object: content}
	u.SetGroupVersionKind(gvk)
	if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("apply %s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, obj); err != nil {
		return fmt.Errorf("read applied %s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	return nil
}

// patchStatus writes obj's status when it differs from orig's, as a merge
// patch against orig, and reports whether it wrote: a status write that
// changes nothing would feed a reconcile loop, and a caller records an
// Event only for a change. status reads an object's status.
func patchStatus[T client.Object](ctx context.Context, c client.Client, obj, orig T, status func(T) any) (bool, error) {
	if equality.Semantic.DeepEqual(status(orig), status(obj)) {
		return false, nil
	}
	if err := c.Status().Patch(ctx, obj, client.MergeFrom(orig)); err != nil {
		return false, fmt.Errorf("update status of %T %s/%s: %w", obj, obj.GetNamespace(), obj.GetName(), err)
	}
	return true, nil
}
