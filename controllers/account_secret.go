package controllers

import (
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// accountHolds reports whether s is the account's credentials Secret to
// read and write: controlled by the account (secretRetention Delete), or
// retained for an account of its name (Retain), which is how an account
// deleted and created again gets its Secret, and its key, back. Anything
// else of that name may be someone's data and is never touched.
func accountHolds(s metav1.Object, acc *v1.SmtpAccount) bool {
	if metav1.IsControlledBy(s, acc) {
		return true
	}
	return metav1.GetControllerOf(s) == nil &&
		s.GetLabels()[render.LabelManagedBy] == render.ManagedByValue && s.GetLabels()[render.LabelAccount] == acc.Name
}

// secretUpToDate reports whether applying desired would change nothing, so
// an idle reconcile makes no write. Labels, annotations and data must match
// exactly: a key or label the operator no longer wants is only removed by
// applying. existing may come from the cache, whose copy keeps a digest of
// the data (keepSecretFields).
func secretUpToDate(existing, desired *corev1.Secret) bool {
	if existing.Type != desired.Type ||
		!maps.Equal(existing.Labels, desired.Labels) ||
		!maps.Equal(existing.Annotations, desired.Annotations) ||
		!sameData(existing.Data, desired.Data) {
		return false
	}
	if len(existing.OwnerReferences) != len(desired.OwnerReferences) {
		return false // an owner to add, or one to drop (secretRetention changed)
	}
	for _, want := range desired.OwnerReferences {
		found := false
		for _, have := range existing.OwnerReferences {
			if equality.Semantic.DeepEqual(have, want) {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// accountKeyDigests returns the digests of the keys a credentials Secret
// makes valid at now, as the relays are given them: the current key's,
// salted with salt (render.DigestSalt), and, during a rotation's grace period,
// the previous one's as it was kept. Relays never see a key.
func accountKeyDigests(s *corev1.Secret, now time.Time, digest func(key string) string) []string {
	st := render.KeyStateFromSecret(s)
	if st.Key == "" {
		return nil
	}
	digests := []string{digest(st.Key)}
	if st.PreviousDigest != "" && now.Before(st.PreviousExpiry) {
		digests = append(digests, st.PreviousDigest)
	}
	return digests
}
