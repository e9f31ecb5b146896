package controllers

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// TestSecretUpToDateFromCache: the cache keeps a credentials Secret's key,
// its rotation state and a digest of its data, not the rest of the data,
// and still tells a Secret that needs writing from one that does not.
func TestSecretUpToDateFromCache(t *testing.T) {
	acc, relay := testAccountObject(), testRelayObject()
	desired := func(labels ...string) *corev1.Secret {
		return render.CredentialsSecret(render.CredentialsInput{Account: acc, Relay: relay, LabelIDs: labels,
			Key: render.KeyState{Key: "secret-key", PreviousDigest: "sha256:00", PreviousExpiry: time.Now().Add(time.Hour)}})
	}
	kept, _ := keepSecretFields(desired("1001"))
	cached := kept.(*corev1.Secret)
	for k := range cached.Data {
		if k != render.SecretKeyPassword && k != render.SecretKeyPreviousPasswordDigest && k != cachedDataDigest {
			t.Errorf("the cache keeps data key %q", k)
		}
	}
	if st := render.KeyStateFromSecret(cached); st.Key != "secret-key" || st.PreviousDigest != "sha256:00" {
		t.Errorf("key state from the cache: %+v", st)
	}
	if !secretUpToDate(cached, desired("1001")) {
		t.Error("a cached Secret is not up to date with its own rendering")
	}
	if secretUpToDate(cached, desired("1001", "1002")) {
		t.Error("a new label's username is not a change")
	}
	other := desired("1001")
	other.Data[render.SecretKeyHost] = []byte("elsewhere.example")
	if secretUpToDate(cached, other) {
		t.Error("a data change the cache does not keep is not seen")
	}
}

// TestOwnedSecretsReadsItsWrites: what the account controller wrote is
// what it reads next, until the watch shows that write.
func TestOwnedSecretsReadsItsWrites(t *testing.T) {
	ctx := context.Background()
	key := types.NamespacedName{Namespace: "tenant", Name: "shop-smtp-credentials"}
	c := &fakeSecretCache{}
	o := &OwnedSecrets{Cache: c, written: map[types.NamespacedName]writtenSecret{}}
	read := func() string {
		s, err := o.read(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if s == nil {
			return "none"
		}
		return s.ResourceVersion
	}
	expect := func(when, want string) {
		t.Helper()
		if got := read(); got != want {
			t.Errorf("%s: read %s, want %s", when, got, want)
		}
	}
	secret := func(uid types.UID, rv string) *corev1.Secret {
		s := render.CredentialsSecret(render.CredentialsInput{Account: testAccountObject(), Relay: testRelayObject(), Key: render.KeyState{Key: "k"}})
		s.Namespace, s.UID, s.ResourceVersion = key.Namespace, uid, rv
		return s
	}

	o.wrote(secret("a", "5"))
	expect("after creating it, the cache not caught up", "5")
	c.secret = secret("a", "5")
	if got := read(); got != "5" || len(o.written) != 0 {
		t.Errorf("cache caught up: read %s, %d writes remembered; want 5 and none", got, len(o.written))
	}

	o.wrote(secret("a", "7"))
	expect("cache behind an update", "7")
	o.seen(secret("a", "6"))
	expect("watch at an earlier version", "7")
	o.seen(secret("a", "7"))
	c.secret = secret("a", "8") // someone wrote after the operator
	expect("watch past the write", "8")

	o.wrote(secret("b", "9"))
	o.deleted(toolscache.DeletedFinalStateUnknown{Key: key.String(), Obj: secret("a", "8")})
	c.secret = nil
	expect("an older Secret of the name deleted", "9")
	o.deleted(secret("b", "10"))
	expect("the written Secret deleted", "none")

	o.wrote(secret("c", "11"))
	o.forget(key)
	expect("after a conflict", "none")
	o.wrote(secret("c", "12"))
	o.written[key] = writtenSecret{secret: o.written[key].secret, at: time.Now().Add(-writtenTTL - time.Second)}
	expect("a write the watch never showed, past writtenTTL", "none")
}

// fakeSecretCache holds at most one Secret; only Get is used.
type fakeSecretCache struct {
	cache.Cache
	secret *corev1.Secret
}

func (c *fakeSecretCache) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	if c.secret == nil || c.secret.Name != key.Name || c.secret.Namespace != key.Namespace {
		return apierrors.NewNotFound(corev1.Resource("secrets"), key.Name)
	}
	kept, _ := keepSecretFields(c.secret.DeepCopy())
	*obj.(*corev1.Secret) = *kept.(*corev1.Secret)
	return nil
}

// TestGetConfirmed: an object missing from the cache is looked for in the
// API server before it is called missing.
func TestGetConfirmed(t *testing.T) {
	ctx := context.Background()
	acc := testAccountObject()
	key := client.ObjectKeyFromObject(acc)
	empty := fake.NewClientBuilder().WithScheme(Scheme()).Build()
	holding := fake.NewClientBuilder().WithScheme(Scheme()).WithObjects(acc).Build()
	if err := getConfirmed(ctx, empty, holding, key, &v1.SmtpAccount{}); err != nil {
		t.Errorf("in the API server, not yet in the cache: %v", err)
	}
	if err := getConfirmed(ctx, empty, empty, key, &v1.SmtpAccount{}); !apierrors.IsNotFound(err) {
		t.Errorf("in neither: %v, want not found", err)
	}
}

// TestCacheLeavesOwnSecretsOut: the manager's cache holds the metadata of
// every Secret but the operator's own, which OwnedSecrets holds.
func TestCacheLeavesOwnSecretsOut(t *testing.T) {
	for obj, by := range CacheOptions().ByObject {
		if _, ok := obj.(*corev1.Secret); !ok {
			continue
		}
		if !by.Label.Matches(labels.Set{}) || !by.Label.Matches(labels.Set{render.LabelManagedBy: "helm"}) {
			t.Errorf("selector %s leaves out Secrets the operator did not make", by.Label)
		}
		if by.Label.Matches(labels.Set{render.LabelManagedBy: render.ManagedByValue}) {
			t.Errorf("selector %s keeps the operator's own Secrets", by.Label)
		}
		return
	}
	t.Error("no cache options for Secrets")
}
