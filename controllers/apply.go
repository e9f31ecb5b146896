package controllers

import (
	"context"
	"encoding/json"
	"fmt"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
)

// The ways a reconciler writes: applyObject for what it owns (writeSecret
// for a Secret), and patchStatus for the status of what it reconciles.
// Reconcilers fetch, call a renderer (controllers/render), apply, and write
// status; nothing else writes.

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
	u, err := applyContent(scheme, obj)
	if err != nil {
		return err
	}
	if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("apply %s %s/%s: %w", u.GetKind(), obj.GetNamespace(), obj.GetName(), err)
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, obj); err != nil {
		return fmt.Errorf("read applied %s %s: %w", u.GetKind(), obj.GetName(), err)
	}
	return nil
}

// writeSecret applies s as applyObject does, but reads back only the
// metadata the API server stored: the data are what was sent. The
// operator writes a credentials Secret per account and a shard (tens of
// KiB) every few seconds during a bulk creation; decoding each back whole
// (and the API server encoding it) bought nothing, since the cache of the
// operator's Secrets is what is read.
//
// A Secret has no status, and its Go type encodes as the API server reads
// it, so it is sent as encoding/json writes it: the unstructured round trip
// of applyObject cost as much as the rest of the write.
func writeSecret(ctx context.Context, c client.Client, s *corev1.Secret) error {
	gvk := corev1.SchemeGroupVersion.WithKind("Secret")
	applied := *s
	applied.TypeMeta = metav1.TypeMeta{APIVersion: gvk.GroupVersion().String(), Kind: gvk.Kind}
	body, err := json.Marshal(&applied)
	if err != nil {
		return fmt.Errorf("apply Secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	written := &metav1.PartialObjectMetadata{}
	written.SetGroupVersionKind(gvk)
	written.Namespace, written.Name = s.Namespace, s.Name
	// A resourceVersion in the body still makes the apply conditional.
	if err := c.Patch(ctx, written, client.RawPatch(types.ApplyPatchType, body), client.FieldOwner(FieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("apply Secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	s.ObjectMeta = written.ObjectMeta
	return nil
}

// applyContent is obj as the body of a server-side apply: its kind, and no
// status.
func applyContent(scheme *runtime.Scheme, obj client.Object) (*unstructured.Unstructured, error) {
	gvk, err := apiutil.GVKForObject(obj, scheme)
	if err != nil {
		return nil, fmt.Errorf("apply %T %s: %w", obj, obj.GetName(), err)
	}
	content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("apply %s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	delete(content, "status")
	u := &unstructured.Unstructured{Object: content}
	u.SetGroupVersionKind(gvk)
	return u, nil
}

// patchStatus writes obj's status when it differs from orig's, as a merge
// patch of the status alone against orig's, and reports whether it wrote:
// a status write that changes nothing would feed a reconcile loop, and a
// caller records an Event only for a change. status reads an object's
// status.
//
// The patch is computed from the two statuses, not the whole objects, and
// sent for the object's metadata alone: at 10,000 accounts and 20,000
// labels, marshalling both objects to diff them and decoding the object
// the API server sends back (which the API server encodes first) was a
// fifth of the operator's CPU. Nothing reads the object after its status
// is written; the cache shows the write. obj then carries the new
// resourceVersion beside the spec it was read with, which may be older
// than the stored one: it must not be the base of a later Update.
func patchStatus[T client.Object](ctx context.Context, c client.Client, obj, orig T, status func(T) any) (bool, error) {
	if equality.Semantic.DeepEqual(status(orig), status(obj)) {
		return false, nil
	}
	patch, err := statusMergePatch(status(orig), status(obj))
	if err != nil {
		return false, fmt.Errorf("status patch of %T %s/%s: %w", obj, obj.GetNamespace(), obj.GetName(), err)
	}
	written, err := metadataOf(c.Scheme(), obj)
	if err != nil {
		return false, err
	}
	if err := c.Status().Patch(ctx, written, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return false, fmt.Errorf("update status of %T %s/%s: %w", obj, obj.GetNamespace(), obj.GetName(), err)
	}
	obj.SetResourceVersion(written.ResourceVersion)
	return true, nil
}

// statusMergePatch is the JSON merge patch that turns an object whose
// status is orig into one whose status is next.
func statusMergePatch(orig, next any) ([]byte, error) {
	from, err := json.Marshal(orig)
	if err != nil {
		return nil, err
	}
	to, err := json.Marshal(next)
	if err != nil {
		return nil, err
	}
	diff, err := jsonpatch.CreateMergePatch(from, to)
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]json.RawMessage{"status": diff})
}

// metadataOf is obj's name and kind, for a write whose answer is read as
// metadata only.
func metadataOf(scheme *runtime.Scheme, obj client.Object) (*metav1.PartialObjectMetadata, error) {
	gvk, err := apiutil.GVKForObject(obj, scheme)
	if err != nil {
		return nil, fmt.Errorf("kind of %T %s: %w", obj, obj.GetName(), err)
	}
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(gvk)
	m.Namespace, m.Name = obj.GetNamespace(), obj.GetName()
	return m, nil
}
