package controllers

import (
	"time"

	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// Defaults of spec.key that the API server cannot fill in when spec.key is
// omitted altogether.
const (
	defaultKeyBytes            = 32
	defaultRotationGracePeriod = 24 * time.Hour
)

// keyChange says what nextKey did, for events and for deciding whether the
// decision must be confirmed against the API server.
type keyChange int

const (
	keyUnchanged keyChange = iota
	keyGenerated           // a generated key, where there was none
	keyImported            // a referenced key, where there was none
	keyRotated             // a new key; the previous one stays valid for the grace period
)

// keyPlan is everything nextKey needs besides the current state.
type keyPlan struct {
	// RefKey is the key read from spec.key.secretRef; "" for generated keys.
	RefKey string
	// Rotate is the account's AnnotationRotateKey value.
	Rotate string
	Bytes  int
	Grace  time.Duration
	// Now is compared with expiries; times written are stamp(), because RFC
	// 3339 annotations keep whole seconds.
	Now time.Time
	// NewKey makes a generated key of n random bytes.
	NewKey func(n int) (string, error)
	// Salt is the account's digest salt on its relay (render.DigestSalt): a
	// rotated-out key is kept as the digest the relay is given.
	Salt []byte
}

// planFor derives an account's keyPlan; refKey is "" for generated keys.
func planFor(acc *v1.SmtpAccount, relay types.NamespacedName, refKey string, now time.Time) keyPlan {
	p := keyPlan{
		Salt:   render.DigestSalt(relay, render.APIUser(acc)),
		RefKey: refKey,
		Rotate: acc.Annotations[render.AnnotationRotateKey],
		Bytes:  defaultKeyBytes,
		Grace:  defaultRotationGracePeriod,
		Now:    now,
		NewKey: newKey,
	}
	if g := acc.Spec.Key.Generated; g != nil && g.Bytes > 0 {
		p.Bytes = int(g.Bytes)
	}
	if d := acc.Spec.Key.RotationGracePeriod; d != nil && d.Duration >= 0 {
		p.Grace = d.Duration
	}
	return p
}

// nextKey decides the key material an account's Secret should carry next.
// An existing key is always kept unless a rotation is asked for (a new
// AnnotationRotateKey value, or a changed referenced key), so that restarts
// and repeated reconciles never issue a key by accident.
func nextKey(cur render.KeyState, p keyPlan) (render.KeyState, keyChange, error) {
	next := cur
	if next.PreviousDigest != "" && !p.Now.Before(next.PreviousExpiry) {
		next.PreviousDigest, next.PreviousExpiry = "", time.Time{}
	}
	if p.RefKey != "" {
		// The referenced Secret is rotated by whoever writes it; an
		// annotation cannot rotate it, so record the value as handled.
		next.RotateHandled = p.Rotate
		switch {
		case cur.Key == "":
			next.Key, next.IssuedAt = p.RefKey, p.stamp()
			return next, keyImported, nil
		case cur.Key != p.RefKey:
			return rotate(next, cur.Key, p.RefKey, p), keyRotated, nil
		}
		return next, keyUnchanged, nil
	}
	if cur.Key != "" && (p.Rotate == "" || p.Rotate == cur.RotateHandled) {
		return next, keyUnchanged, nil
	}
	key, err := p.NewKey(p.Bytes)
	if err != nil {
		return cur, keyUnchanged, err
	}
	next.RotateHandled = p.Rotate
	if cur.Key == "" {
		// A first key: an annotation present from the start asks for nothing.
		next.Key, next.IssuedAt = key, p.stamp()
		return next, keyGenerated, nil
	}
	return rotate(next, cur.Key, key, p), keyRotated, nil
}

// rotate replaces the key and keeps the old one's digest for the grace period.
func rotate(next render.KeyState, oldKey, newKey string, p keyPlan) render.KeyState {
	next.Key, next.IssuedAt = newKey, p.stamp()
	next.PreviousDigest = wire.SaltedDigest(oldKey, p.Salt)
	next.PreviousExpiry = next.IssuedAt.Add(p.Grace)
	if p.Grace == 0 {
		next.PreviousDigest, next.PreviousExpiry = "", time.Time{}
	}
	return next
}

// stamp is Now as it is written down.
func (p keyPlan) stamp() time.Time { return p.Now.UTC().Truncate(time.Second) }

// newKey returns a key of n random bytes, in the relay's key format.
func newKey(n int) (string, error) { return wire.NewKeyOfSize(n) }
