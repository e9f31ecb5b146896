package controllers

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
)

// TestRelayAppliesOnlyChanges: a relay's object is applied again only when
// its rendering changed, or the object did since the operator applied it.
func TestRelayAppliesOnlyChanges(t *testing.T) {
	ctx := context.Background()
	applies := 0
	c := fake.NewClientBuilder().WithScheme(Scheme()).WithInterceptorFuncs(interceptor.Funcs{
		Apply: func(ctx context.Context, c client.WithWatch, obj runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
			applies++
			return c.Apply(ctx, obj, opts...)
		},
	}).Build()
	r := &RelayReconciler{Client: c, Scheme: Scheme()}
	config := func(hostname string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "mx-config", Namespace: "platform"},
			Data: map[string]string{"relay.yaml": "hostname: " + hostname + "\n"}}
	}
	step := func(what string, obj *corev1.ConfigMap, want int) {
		t.Helper()
		if err := r.applyIfChanged(ctx, obj); err != nil {
			t.Fatal(err)
		}
		if applies != want {
			t.Errorf("%s: %d applies, want %d", what, applies, want)
		}
	}
	step("a new object", config("a"), 1)
	step("the same rendering", config("a"), 1)
	step("another rendering", config("b"), 2)
	edited := &corev1.ConfigMap{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "platform", Name: "mx-config"}, edited); err != nil {
		t.Fatal(err)
	}
	edited.Data["relay.yaml"] = "hostname: tampered\n"
	if err := c.Update(ctx, edited); err != nil {
		t.Fatal(err)
	}
	step("the object edited since", config("b"), 3)
	step("put back", config("b"), 3)
}
