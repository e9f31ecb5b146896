package controllers

import (
	"maps"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/utils/ptr"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
)

// credentialsSecretType follows the Service Binding specification's
// recommendation of servicebinding.io/<type> for binding Secrets.
const credentialsSecretType corev1.SecretType = "servicebinding.io/" + BindingType

// labelInstance is never copied onto a generated Secret: Argo CD treats
// objects carrying it as its own and prunes them.
const labelInstance = "app.kubernetes.io/instance"

// defaultSubmissionPort is the port written when the relay declares no
// listeners (its defaults include 587 with STARTTLS).
const defaultSubmissionPort = 587

// credentialsSecretName is the account's credentials Secret.
func credentialsSecretName(acc *v1.SmtpAccount) string {
	if acc.Spec.SecretName != "" {
		return acc.Spec.SecretName
	}
	return acc.Name + "-smtp-credentials"
}

// effectiveAPIUser is the account's SMTP username: spec.apiUser, defaulted
// here rather than written back, because the spec belongs to the user.
func effectiveAPIUser(acc *v1.SmtpAccount) string {
	if acc.Spec.APIUser != "" {
		return acc.Spec.APIUser
	}
	return acc.Name
}

// relayHost is the relay's address as a client in the cluster dials it.
func relayHost(relay *v1.SmtpRelay) string {
	if relay.Status.Endpoint != "" {
		return relay.Status.Endpoint
	}
	return relay.Name + "." + relay.Namespace + ".svc"
}

// submissionPort picks the port applications should submit on: 587 when
// the relay serves it with STARTTLS (the submission port, RFC 6409),
// otherwise its first STARTTLS listener, otherwise its first listener.
func submissionPort(relay *v1.SmtpRelay) int32 {
	ls := relay.Spec.Listeners
	if len(ls) == 0 {
		return defaultSubmissionPort
	}
	first := int32(0)
	for _, l := range ls {
		if l.TLS != v1.ListenerStartTLS && l.TLS != "" {
			continue
		}
		if l.Port == defaultSubmissionPort {
			return l.Port
		}
		if first == 0 {
			first = l.Port
		}
	}
	if first != 0 {
		return first
	}
	return ls[0].Port
}

// credentialsInput is what the credentials Secret is rendered from.
type credentialsInput struct {
	Account  *v1.SmtpAccount
	Relay    *v1.SmtpRelay
	LabelIDs []string // labels that may log in as api_user#label_id
	Key      keyState
}

// renderCredentialsSecret builds the desired credentials Secret: Service
// Binding keys, one username per label, the key and its rotation state.
func renderCredentialsSecret(in credentialsInput) *corev1.Secret {
	acc, apiUser := in.Account, effectiveAPIUser(in.Account)
	data := map[string][]byte{
		SecretKeyType:     []byte(BindingType),
		SecretKeyProvider: []byte(BindingProvider),
		SecretKeyHost:     []byte(relayHost(in.Relay)),
		SecretKeyPort:     []byte(strconv.Itoa(int(submissionPort(in.Relay)))),
		SecretKeyUsername: []byte(apiUser),
		SecretKeyPassword: []byte(in.Key.Key),
	}
	for _, id := range in.LabelIDs {
		data[SecretKeyLabelUsernamePrefix+id] = []byte(wire.Username(apiUser, id))
	}
	annotations := map[string]string{}
	labels := map[string]string{}
	if t := acc.Spec.SecretTemplate; t != nil {
		maps.Copy(annotations, t.Annotations)
		for k, v := range t.Labels {
			labels[k] = string(v)
		}
	}
	delete(labels, labelInstance)
	labels[LabelManagedBy] = ManagedByValue
	labels[LabelAccount] = acc.Name
	setKeyAnnotations(annotations, in.Key)
	if in.Key.PreviousDigest != "" {
		data[SecretKeyPreviousPasswordDigest] = []byte(in.Key.PreviousDigest)
	}
	var owners []metav1.OwnerReference
	if acc.Spec.SecretRetention == v1.SecretRetentionDelete {
		owners = []metav1.OwnerReference{accountOwnerRef(acc)}
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:            credentialsSecretName(acc),
			Namespace:       acc.Namespace,
			Labels:          labels,
			Annotations:     annotations,
			OwnerReferences: owners,
		},
		Type: credentialsSecretType,
		Data: data,
	}
}

// accountHolds reports whether s is the account's credentials Secret to
// read and write: controlled by the account (secretRetention Delete), or
// retained for an account of its name (Retain), which is how an account
// deleted and created again gets its Secret, and its key, back. Anything
// else of that name may be someone's data and is never touched.
func accountHolds(s *corev1.Secret, acc *v1.SmtpAccount) bool {
	if metav1.IsControlledBy(s, acc) {
		return true
	}
	return metav1.GetControllerOf(s) == nil &&
		s.Labels[LabelManagedBy] == ManagedByValue && s.Labels[LabelAccount] == acc.Name
}

// setKeyAnnotations records the rotation state beside the key, so that it
// survives operator restarts and a status that was lost.
func setKeyAnnotations(a map[string]string, k keyState) {
	for _, name := range []string{AnnotationKeyIssuedAt, AnnotationRotateKeyHandled, AnnotationPreviousKeyExpiresAt} {
		delete(a, name) // the template must not forge them
	}
	if !k.IssuedAt.IsZero() {
		a[AnnotationKeyIssuedAt] = formatTime(k.IssuedAt)
	}
	if k.RotateHandled != "" {
		a[AnnotationRotateKeyHandled] = k.RotateHandled
	}
	if k.PreviousDigest != "" {
		a[AnnotationPreviousKeyExpiresAt] = formatTime(k.PreviousExpiry)
	}
}

// accountOwnerRef makes the account the Secret's controller, so the Secret
// is garbage-collected with it.
func accountOwnerRef(acc *v1.SmtpAccount) metav1.OwnerReference {
	return metav1.OwnerReference{
		APIVersion:         v1.GroupVersion.String(),
		Kind:               "SmtpAccount",
		Name:               acc.Name,
		UID:                acc.UID,
		Controller:         ptr.To(true),
		BlockOwnerDeletion: ptr.To(true),
	}
}

// secretApplyConfiguration turns a rendered Secret into a server-side apply
// request. A resourceVersion, when set, makes the apply conditional on the
// Secret being unchanged since it was read.
func secretApplyConfiguration(s *corev1.Secret) *corev1ac.SecretApplyConfiguration {
	ac := corev1ac.Secret(s.Name, s.Namespace).
		WithLabels(s.Labels).
		WithAnnotations(s.Annotations).
		WithType(s.Type).
		WithData(s.Data)
	for _, o := range s.OwnerReferences {
		ac.WithOwnerReferences(metav1ac.OwnerReference().
			WithAPIVersion(o.APIVersion).WithKind(o.Kind).WithName(o.Name).WithUID(o.UID).
			WithController(ptr.Deref(o.Controller, false)).
			WithBlockOwnerDeletion(ptr.Deref(o.BlockOwnerDeletion, false)))
	}
	if s.ResourceVersion != "" {
		ac.WithResourceVersion(s.ResourceVersion)
	}
	return ac
}

// secretUpToDate reports whether applying desired would change nothing, so
// an idle reconcile makes no write. Labels, annotations and data must match
// exactly: a key or label the operator no longer wants is only removed by
// applying.
func secretUpToDate(existing, desired *corev1.Secret) bool {
	if existing.Type != desired.Type ||
		!maps.Equal(existing.Labels, desired.Labels) ||
		!maps.Equal(existing.Annotations, desired.Annotations) ||
		!equality.Semantic.DeepEqual(existing.Data, desired.Data) {
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
// salted with salt (keyDigestSalt), and, during a rotation's grace period,
// the previous one's as it was kept. Relays never see a key.
func accountKeyDigests(s *corev1.Secret, now time.Time, digest func(key string) string) []string {
	st := keyStateFromSecret(s)
	if st.Key == "" {
		return nil
	}
	digests := []string{digest(st.Key)}
	if st.PreviousDigest != "" && now.Before(st.PreviousExpiry) {
		digests = append(digests, st.PreviousDigest)
	}
	return digests
}
