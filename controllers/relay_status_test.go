package controllers

import (
	"context"
	"testing"

	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/v1alpha1/v1alpha1test"
)

// Status is written only when it changes, and an event only when the
// reason changes: a steady relay costs the API server nothing per
// reconcile. A fake client counts the status writes, which envtest could
// only show by waiting for something not to happen.
func TestRelayStatusWrittenOnlyOnChange(t *testing.T) {
	relay := v1alpha1test.Relay("mail", "mx")
	writes := 0
	c := fake.NewClientBuilder().WithScheme(Scheme()).
		WithObjects(relay).WithStatusSubresource(relay).
		WithInterceptorFuncs(interceptor.Funcs{
			SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
				writes++
				return c.SubResource(sub).Patch(ctx, obj, p, opts...)
			},
		}).Build()
	rec := events.NewFakeRecorder(10)
	r := &RelayReconciler{Client: c, Scheme: Scheme(), Recorder: rec}

	steps := []struct {
		name       string
		verdict    relayVerdict
		wantWrites int
		wantEvent  string // "" for none
	}{
		{"first verdict", relayVerdict{reason: v1.ReasonIssuerNotFound, message: "Issuer x missing"}, 1, "Warning IssuerNotFound Issuer x missing"},
		{"same again", relayVerdict{reason: v1.ReasonIssuerNotFound, message: "Issuer x missing"}, 1, ""},
		{"progress: status only", relayVerdict{reason: v1.ReasonCertificateNotReady, message: "not yet"}, 2, ""},
		{"ready", relayVerdict{ready: true, reason: v1.ReasonReady, message: "2 of 2"}, 3, "Normal Ready 2 of 2"},
		{"ready again", relayVerdict{ready: true, reason: v1.ReasonReady, message: "2 of 2"}, 3, ""},
	}
	for _, s := range steps {
		cur := &v1.SmtpRelay{}
		if err := c.Get(context.Background(), client.ObjectKeyFromObject(relay), cur); err != nil {
			t.Fatal(err)
		}
		if err := r.updateStatus(context.Background(), cur, cur.DeepCopy(), s.verdict); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if writes != s.wantWrites {
			t.Errorf("%s: %d status writes, want %d", s.name, writes, s.wantWrites)
		}
		select {
		case e := <-rec.Events:
			if e != s.wantEvent {
				t.Errorf("%s: event %q, want %q", s.name, e, s.wantEvent)
			}
		default:
			if s.wantEvent != "" {
				t.Errorf("%s: no event, want %q", s.name, s.wantEvent)
			}
		}
	}
}
