package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// How the operator reads Secrets, every read from a cache:
//
//   - its own (credentials Secrets and shards, which carry its managed-by
//     label), with their data, from OwnedSecrets: a cache that holds nothing
//     else, reduced by keepSecretFields;
//   - any other Secret's metadata, from the manager's metadata cache that
//     the Secret watches fill, which leaves the operator's own out
//     (CacheOptions): enough to see that a name is taken by someone else,
//     or that a referenced Secret exists and changed;
//   - a referenced key (spec.key.secretRef) from the API server, only when
//     its Secret changed since the key was last read (referencedKey).
//
// No cache holds the data of a Secret the operator did not write.

// OwnedSecrets is the cache of the Secrets the operator writes, shared by
// the account controller and the publisher, and what the account
// controller last wrote that the cache has not shown yet.
type OwnedSecrets struct {
	cache.Cache
	// others is the manager's cache, which holds the metadata of every
	// other Secret.
	others client.Reader

	mu sync.Mutex
	// written holds the Secrets this process wrote, as keepSecretFields
	// leaves them, until the cache shows them: a reconcile that follows its
	// own write sooner than the watch must not decide on the older copy (a
	// Secret it has just created would look missing, and a second key be
	// issued).
	written map[types.NamespacedName]writtenSecret
}

type writtenSecret struct {
	secret *corev1.Secret
	at     time.Time
}

// writtenTTL bounds how long a write is preferred to the cache: the watch
// shows a write within milliseconds, and only a watch that started over
// may skip it. Past this the cache is trusted again.
const writtenTTL = 30 * time.Second

// NewOwnedSecrets makes the cache of the operator's Secrets and adds it to
// mgr, which starts it.
func NewOwnedSecrets(mgr ctrl.Manager) (*OwnedSecrets, error) {
	c, err := cache.New(mgr.GetConfig(), cache.Options{
		Scheme: mgr.GetScheme(),
		Mapper: mgr.GetRESTMapper(),
		ByObject: map[client.Object]cache.ByObject{&corev1.Secret{}: {
			Label:     labels.SelectorFromSet(labels.Set{render.LabelManagedBy: render.ManagedByValue}),
			Transform: keepSecretFields,
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("cache of the operator's Secrets: %w", err)
	}
	if err := mgr.Add(c); err != nil {
		return nil, fmt.Errorf("add Secrets cache: %w", err)
	}
	o := &OwnedSecrets{Cache: c, others: mgr.GetClient(), written: map[types.NamespacedName]writtenSecret{}}
	inf, err := c.GetInformer(context.Background(), &corev1.Secret{})
	if err != nil {
		return nil, fmt.Errorf("informer of the operator's Secrets: %w", err)
	}
	_, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    o.seen,
		UpdateFunc: func(_, obj any) { o.seen(obj) },
		DeleteFunc: o.deleted,
	})
	if err != nil {
		return nil, fmt.Errorf("watch the operator's Secrets: %w", err)
	}
	return o, nil
}

// read returns the operator's Secret key as it last knows it: the cache's
// copy, or its own later write; nil when there is none.
func (o *OwnedSecrets) read(ctx context.Context, key types.NamespacedName) (*corev1.Secret, error) {
	s := &corev1.Secret{}
	if err := o.Get(ctx, key, s); apierrors.IsNotFound(err) {
		s = nil
	} else if err != nil {
		return nil, fmt.Errorf("get Secret %s: %w", key, err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	w, ok := o.written[key]
	if !ok {
		return s, nil
	}
	if (s != nil && s.ResourceVersion == w.secret.ResourceVersion) || time.Since(w.at) > writtenTTL {
		delete(o.written, key)
		return s, nil
	}
	return w.secret.DeepCopy(), nil
}

// wrote records s as it was written (the data sent, the metadata the API
// server stored) until the cache shows it.
func (o *OwnedSecrets) wrote(s *corev1.Secret) {
	kept, _ := keepSecretFields(s.DeepCopy())
	o.mu.Lock()
	defer o.mu.Unlock()
	o.written[client.ObjectKeyFromObject(s)] = writtenSecret{secret: kept.(*corev1.Secret), at: time.Now()}
}

// forget drops what was recorded of key: a write conditional on it was
// refused, so the cache is to be read again.
func (o *OwnedSecrets) forget(key types.NamespacedName) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.written, key)
}

// seen is the watch showing a Secret: a recorded write it has caught up
// with is no longer needed. The watch shows versions in order, so once it
// shows the recorded one, the cache is never older again.
func (o *OwnedSecrets) seen(obj any) {
	o.dropWhen(obj, func(w, s *corev1.Secret) bool { return w.ResourceVersion == s.ResourceVersion })
}

// deleted is the watch showing a Secret deleted: what was recorded of that
// Secret is gone with it (one created since has another UID).
func (o *OwnedSecrets) deleted(obj any) {
	if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	o.dropWhen(obj, func(w, s *corev1.Secret) bool { return w.UID == s.UID })
}

// dropWhen forgets the recorded write of the Secret obj when caughtUp says
// the watch, showing obj, has caught up with it.
func (o *OwnedSecrets) dropWhen(obj any, caughtUp func(written, shown *corev1.Secret) bool) {
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return
	}
	key := client.ObjectKeyFromObject(s)
	o.mu.Lock()
	defer o.mu.Unlock()
	if w, ok := o.written[key]; ok && caughtUp(w.secret, s) {
		delete(o.written, key)
	}
}

// cachedDataDigest is the data key under which keepSecretFields keeps a
// digest of a Secret's whole data. It is not a valid data key (those match
// [-._a-zA-Z0-9]+), so no Secret can carry it.
const cachedDataDigest = "#sha256"

// keepSecretFields reduces a Secret in the cache of the operator's Secrets
// to what the controllers read: labels, annotations, the controller
// reference, the key, the previous key's digest and the webhooks' signing
// secrets of a credentials Secret, the content of a shard, and a digest of the whole data to tell whether
// applying a Secret would change it (secretUpToDate). At 10,000 accounts
// the rest (binding fields, one username per label, owner references,
// managed fields) would stay on the heap for nothing.
func keepSecretFields(obj any) (any, error) {
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return obj, nil
	}
	s.ManagedFields = nil
	// The controller reference alone says which account a Secret belongs
	// to; other owners are not the operator's to write.
	var owner []metav1.OwnerReference
	if ref := metav1.GetControllerOfNoCopy(s); ref != nil {
		owner = []metav1.OwnerReference{*ref}
	}
	s.OwnerReferences = owner
	// A new map: deleting keys would not shrink the old one.
	kept := make(map[string][]byte, 3)
	for _, k := range []string{render.SecretKeyPassword, render.SecretKeyPreviousPasswordDigest, render.SecretKeyWebhookSigningSecrets, wire.ShardDataKey, render.SecretKeyDKIM} {
		if v, ok := s.Data[k]; ok {
			kept[k] = v
		}
	}
	kept[cachedDataDigest] = dataDigest(s.Data)
	s.Data = kept
	return s, nil
}

// dataDigest is a digest of a Secret's data, keys and values.
func dataDigest(data map[string][]byte) []byte {
	h := sha256.New()
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "%d:%s%d:", len(k), k, len(data[k]))
		h.Write(data[k])
	}
	return []byte(hex.EncodeToString(h.Sum(nil)))
}

// sameData reports whether a Secret's data, as a cache or the API server
// has it, is desired.
func sameData(existing, desired map[string][]byte) bool {
	if d, ok := existing[cachedDataDigest]; ok {
		return string(d) == string(dataDigest(desired))
	}
	return equality.Semantic.DeepEqual(existing, desired)
}

// metadata reads any Secret's metadata, the operator's own from this cache
// and any other from the manager's; nil when there is no such Secret.
func (o *OwnedSecrets) metadata(ctx context.Context, key types.NamespacedName) (*metav1.ObjectMeta, error) {
	if s, err := o.read(ctx, key); err != nil || s != nil {
		if s == nil {
			return nil, err
		}
		return &s.ObjectMeta, nil
	}
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	if err := o.others.Get(ctx, key, m); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("get Secret %s: %w", key, err)
	}
	return &m.ObjectMeta, nil
}

// getConfirmed reads key into obj from the cache and, only when the cache
// has no such object, from the API server. Each kind has a watch of its
// own, so the cache may show an object before what it refers to (a label
// before its account, when both were just created): "not found" is
// reported only when the API server says so too, not as a Warning that
// goes away a moment later.
func getConfirmed(ctx context.Context, cached, live client.Reader, key client.ObjectKey, obj client.Object) error {
	err := cached.Get(ctx, key, obj)
	if !apierrors.IsNotFound(err) {
		return err
	}
	return live.Get(ctx, key, obj)
}
