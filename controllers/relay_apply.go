package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"sync"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	"github.com/mailfleet/mailfleet/controllers/render"
)

// A relay is reconciled when its shards are written (its status.accounts
// counts them), which during a bulk creation of accounts is every 2 s
// (accountsCountDelay). Its objects rarely change meanwhile, so they
// are read from the cache and applied only when the rendering changed or
// the object did since the operator applied it.

// cachedRelayObject reads the relay's object obj from the manager's cache,
// in the form the relay controller watches it: its Deployment and
// Certificate whole (their status feeds the relay's), the rest as metadata.
// It returns nil when the cache does not have it: not made yet, or not made
// by the operator (the cache holds only what carries its managed-by label).
func (r *RelayReconciler) cachedRelayObject(ctx context.Context, obj client.Object) (client.Object, error) {
	var cached client.Object
	switch obj.(type) {
	case *appsv1.Deployment:
		cached = &appsv1.Deployment{}
	case *certmanagerv1.Certificate:
		cached = &certmanagerv1.Certificate{}
	default:
		gvk, err := apiutil.GVKForObject(obj, r.Scheme)
		if err != nil {
			return nil, fmt.Errorf("kind of %T: %w", obj, err)
		}
		m := &metav1.PartialObjectMetadata{}
		m.SetGroupVersionKind(gvk)
		cached = m
	}
	err := r.Client.Get(ctx, client.ObjectKeyFromObject(obj), cached)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %T %s from the cache: %w", obj, obj.GetName(), err)
	}
	return cached, nil
}

// appliedObjects remembers, for each object the relay controller applied,
// a digest of what it applied and the resourceVersion the API server gave
// the result.
type appliedObjects struct {
	mu sync.Mutex
	m  map[string]appliedObject
}

type appliedObject struct {
	digest          [sha256.Size]byte
	resourceVersion string
}

func appliedKey(obj client.Object) string {
	return fmt.Sprintf("%T %s/%s", obj, obj.GetNamespace(), obj.GetName())
}

func renderedDigest(obj client.Object) ([sha256.Size]byte, error) {
	data, err := json.Marshal(obj)
	if err != nil {
		return [sha256.Size]byte{}, fmt.Errorf("digest of %T %s: %w", obj, obj.GetName(), err)
	}
	return sha256.Sum256(data), nil
}

// applyIfChanged applies the rendered obj unless the operator applied the
// same rendering before and the cache shows the object as that apply left
// it. Either way obj ends up as the API server has it, status included,
// for the kinds whose status the relay reads.
func (r *RelayReconciler) applyIfChanged(ctx context.Context, obj render.Object) error {
	digest, err := renderedDigest(obj)
	if err != nil {
		return err
	}
	key := appliedKey(obj)
	cached, err := r.cachedRelayObject(ctx, obj)
	if err != nil {
		return err
	}
	r.applied.mu.Lock()
	last, ok := r.applied.m[key]
	r.applied.mu.Unlock()
	if ok && cached != nil && last.digest == digest && last.resourceVersion == cached.GetResourceVersion() {
		switch o := obj.(type) {
		case *appsv1.Deployment:
			*o = *cached.(*appsv1.Deployment)
		case *certmanagerv1.Certificate:
			*o = *cached.(*certmanagerv1.Certificate)
		}
		return nil
	}
	if err := applyObject(ctx, r.Client, r.Scheme, obj); err != nil {
		return err
	}
	r.applied.mu.Lock()
	defer r.applied.mu.Unlock()
	if r.applied.m == nil {
		r.applied.m = map[string]appliedObject{}
	}
	r.applied.m[key] = appliedObject{digest: digest, resourceVersion: obj.GetResourceVersion()}
	return nil
}
