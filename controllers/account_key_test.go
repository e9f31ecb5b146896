package controllers

import (
	"encoding/base64"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// TestAccountNextKey is the key life cycle as a table: what is kept, what is
// issued, and how long a previous key stays valid.
func TestAccountNextKey(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	earlier := now.Add(-time.Hour)
	fixed := func(n int) (string, error) { return fmt.Sprintf("new-%d", n), nil }
	plan := func(mut func(*keyPlan)) keyPlan {
		p := keyPlan{Bytes: 32, Grace: 24 * time.Hour, Now: now, NewKey: fixed, Salt: testSalt}
		if mut != nil {
			mut(&p)
		}
		return p
	}
	tests := []struct {
		name   string
		cur    render.KeyState
		plan   keyPlan
		want   render.KeyState
		change keyChange
	}{
		{
			name:   "first generated key",
			plan:   plan(nil),
			want:   render.KeyState{Key: "new-32", IssuedAt: now},
			change: keyGenerated,
		},
		{
			name:   "first key honours bytes; an annotation present from the start is only recorded",
			plan:   plan(func(p *keyPlan) { p.Bytes, p.Rotate = 48, "v1" }),
			want:   render.KeyState{Key: "new-48", IssuedAt: now, RotateHandled: "v1"},
			change: keyGenerated,
		},
		{
			name:   "existing key kept",
			cur:    render.KeyState{Key: "old", IssuedAt: earlier},
			plan:   plan(nil),
			want:   render.KeyState{Key: "old", IssuedAt: earlier},
			change: keyUnchanged,
		},
		{
			name:   "handled rotation value kept",
			cur:    render.KeyState{Key: "old", IssuedAt: earlier, RotateHandled: "v1"},
			plan:   plan(func(p *keyPlan) { p.Rotate = "v1" }),
			want:   render.KeyState{Key: "old", IssuedAt: earlier, RotateHandled: "v1"},
			change: keyUnchanged,
		},
		{
			name:   "annotation removed: nothing to do",
			cur:    render.KeyState{Key: "old", IssuedAt: earlier, RotateHandled: "v1"},
			plan:   plan(nil),
			want:   render.KeyState{Key: "old", IssuedAt: earlier, RotateHandled: "v1"},
			change: keyUnchanged,
		},
		{
			name: "new rotation value rotates with grace",
			cur:  render.KeyState{Key: "old", IssuedAt: earlier, RotateHandled: "v1"},
			plan: plan(func(p *keyPlan) { p.Rotate = "v2" }),
			want: render.KeyState{Key: "new-32", IssuedAt: now, RotateHandled: "v2",
				PreviousDigest: wire.SaltedDigest("old", testSalt), PreviousExpiry: now.Add(24 * time.Hour)},
			change: keyRotated,
		},
		{
			name:   "zero grace keeps no previous key",
			cur:    render.KeyState{Key: "old"},
			plan:   plan(func(p *keyPlan) { p.Rotate, p.Grace = "v1", 0 }),
			want:   render.KeyState{Key: "new-32", IssuedAt: now, RotateHandled: "v1"},
			change: keyRotated,
		},
		{
			name:   "expired previous key dropped",
			cur:    render.KeyState{Key: "old", PreviousDigest: "sha256:x", PreviousExpiry: now},
			plan:   plan(nil),
			want:   render.KeyState{Key: "old"},
			change: keyUnchanged,
		},
		{
			name:   "running grace period kept",
			cur:    render.KeyState{Key: "old", PreviousDigest: "sha256:x", PreviousExpiry: now.Add(time.Second)},
			plan:   plan(nil),
			want:   render.KeyState{Key: "old", PreviousDigest: "sha256:x", PreviousExpiry: now.Add(time.Second)},
			change: keyUnchanged,
		},
		{
			name:   "referenced key imported",
			plan:   plan(func(p *keyPlan) { p.RefKey = "ref" }),
			want:   render.KeyState{Key: "ref", IssuedAt: now},
			change: keyImported,
		},
		{
			name:   "referenced key unchanged",
			cur:    render.KeyState{Key: "ref", IssuedAt: earlier},
			plan:   plan(func(p *keyPlan) { p.RefKey = "ref" }),
			want:   render.KeyState{Key: "ref", IssuedAt: earlier},
			change: keyUnchanged,
		},
		{
			name: "referenced key changed: a rotation with grace",
			cur:  render.KeyState{Key: "ref", IssuedAt: earlier},
			plan: plan(func(p *keyPlan) { p.RefKey = "ref2" }),
			want: render.KeyState{Key: "ref2", IssuedAt: now,
				PreviousDigest: wire.SaltedDigest("ref", testSalt), PreviousExpiry: now.Add(24 * time.Hour)},
			change: keyRotated,
		},
		{
			name:   "annotation on a referenced key is recorded, not acted on",
			cur:    render.KeyState{Key: "ref", IssuedAt: earlier},
			plan:   plan(func(p *keyPlan) { p.RefKey, p.Rotate = "ref", "v1" }),
			want:   render.KeyState{Key: "ref", IssuedAt: earlier, RotateHandled: "v1"},
			change: keyUnchanged,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, change, err := nextKey(tt.cur, tt.plan)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || change != tt.change {
				t.Errorf("nextKey = %+v, %v\nwant      %+v, %v", got, change, tt.want, tt.change)
			}
		})
	}
}

func TestAccountNewKey(t *testing.T) {
	for _, n := range []int{16, 32, 64} {
		k, err := newKey(n)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := base64.RawURLEncoding.DecodeString(k)
		if err != nil || len(raw) != n {
			t.Errorf("newKey(%d) = %q: %d bytes, %v", n, k, len(raw), err)
		}
	}
	a, _ := newKey(32)
	b, _ := newKey(32)
	if a == b {
		t.Error("two keys are equal")
	}
}

// testSalt is a key digest salt, as planFor derives one.
var testSalt = render.DigestSalt(types.NamespacedName{Namespace: "mail", Name: "mx"}, "acme")

func TestAccountKeyPlanDefaults(t *testing.T) {
	acc := &v1.SmtpAccount{}
	p := planFor(acc, types.NamespacedName{Namespace: "mail", Name: "mx"}, "", time.Now())
	if p.Bytes != 32 || p.Grace != 24*time.Hour || len(p.Salt) == 0 {
		t.Errorf("defaults: bytes %d, grace %v", p.Bytes, p.Grace)
	}
	acc.Spec.Key = v1.AccountKey{Generated: &v1.GeneratedKey{Bytes: 20}, RotationGracePeriod: &metav1.Duration{Duration: time.Minute}}
	acc.Annotations = map[string]string{render.AnnotationRotateKey: "x"}
	p = planFor(acc, types.NamespacedName{Namespace: "mail", Name: "mx"}, "", time.Now())
	if p.Bytes != 20 || p.Grace != time.Minute || p.Rotate != "x" {
		t.Errorf("from spec: %+v", p)
	}
}

// TestAccountKeyStateRoundTrip: what a Secret records is what is read back, and a
// previous key without a readable expiry is not trusted.
func TestAccountKeyStateRoundTrip(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	k := render.KeyState{Key: "k", IssuedAt: now, RotateHandled: "v3",
		PreviousDigest: wire.Digest("old"), PreviousExpiry: now.Add(time.Hour)}
	s := render.CredentialsSecret(render.CredentialsInput{Account: testAccountObject(), Relay: testRelayObject(), Key: k})
	if got := render.KeyStateFromSecret(s); got != k {
		t.Errorf("round trip: %+v, want %+v", got, k)
	}
	delete(s.Annotations, render.AnnotationPreviousKeyExpiresAt)
	if got := render.KeyStateFromSecret(s); got.PreviousDigest != "" {
		t.Errorf("previous digest without expiry kept: %+v", got)
	}
	if got := render.KeyStateFromSecret((*corev1.Secret)(nil)); got != (render.KeyState{}) {
		t.Errorf("nil Secret: %+v", got)
	}
}

// TestAccountKeyEvents: of the key changes, only a rotation is an Event. A
// first key (generated or copied from spec.key.secretRef) comes with every
// new account, and 10,000 of them would bury what a person must read.
func TestAccountKeyEvents(t *testing.T) {
	rec := events.NewFakeRecorder(10)
	r := &AccountReconciler{Recorder: rec}
	acc := testAccountObject()
	acc.Spec.Key.SecretRef = &v1.SecretKeyReference{Name: "sealed-key"}
	s := render.CredentialsSecret(render.CredentialsInput{Account: acc, Relay: testRelayObject(), Key: render.KeyState{Key: "secret-key"}})
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	rotated := render.KeyState{Key: "secret-key", IssuedAt: now, PreviousDigest: "sha256:00", PreviousExpiry: now.Add(time.Hour)}
	for _, change := range []keyChange{keyUnchanged, keyGenerated, keyImported, keyRotated} {
		r.keyEvent(acc, s, change, rotated)
	}
	close(rec.Events)
	var got []string
	for e := range rec.Events {
		got = append(got, e)
	}
	want := `Normal KeyRotated issued a new key in Secret "shop-smtp-credentials"; the previous key works until 2026-03-01T13:00:00Z`
	if len(got) != 1 || got[0] != want {
		t.Errorf("events = %q, want only %q", got, want)
	}
}
