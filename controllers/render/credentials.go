package render

import (
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"

	"github.com/mailfleet/mailfleet/api/wire"
)

// credentialsSecretType follows the Service Binding specification's
// recommendation of servicebinding.io/<type> for binding Secrets.
const credentialsSecretType corev1.SecretType = "servicebinding.io/" + BindingType

// defaultSubmissionPort is the port written when the relay declares no
// listeners (its defaults include 587 with STARTTLS).
const defaultSubmissionPort = 587

// CredentialsSecretSuffix makes an account's name the name of its
// credentials Secret, unless spec.secretName names it.
const CredentialsSecretSuffix = "-smtp-credentials"

// CredentialsSecretName is the account's credentials Secret.
func CredentialsSecretName(acc *v1.SmtpAccount) string {
	if acc.Spec.SecretName != "" {
		return acc.Spec.SecretName
	}
	return acc.Name + CredentialsSecretSuffix
}

// APIUser is the account's SMTP username: spec.apiUser, defaulted
// here rather than written back, because the spec belongs to the user.
func APIUser(acc *v1.SmtpAccount) string {
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

// SubmissionPort picks the port applications should submit on: 587 when
// the relay serves it with STARTTLS (the submission port, RFC 6409),
// otherwise its first STARTTLS listener, otherwise its first listener.
func SubmissionPort(relay *v1.SmtpRelay) int32 {
	ls := relay.Spec.Listeners
	if len(ls) == 0 {
		return defaultSubmissionPort
	}
	first := int32(0)
	smtp := slices.DeleteFunc(slices.Clone(ls), v1.RelayListener.IsHTTP)
	for _, l := range smtp {
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
	if len(smtp) > 0 {
		return smtp[0].Port
	}
	return ls[0].Port
}

// CredentialsInput is what the credentials Secret is rendered from.
type CredentialsInput struct {
	Account  *v1.SmtpAccount
	Relay    *v1.SmtpRelay
	LabelIDs []string // labels that may log in as api_user#label_id
	Key      KeyState
	// WebhookSecrets are the signing secrets of the account's webhooks,
	// by URL.
	WebhookSecrets map[string]string
}

// CredentialsSecret builds the desired credentials Secret: Service
// Binding keys, one username per label, the key and its rotation state.
func CredentialsSecret(in CredentialsInput) *corev1.Secret {
	acc, apiUser := in.Account, APIUser(in.Account)
	data := map[string][]byte{
		SecretKeyType:     []byte(BindingType),
		SecretKeyProvider: []byte(BindingProvider),
		SecretKeyHost:     []byte(relayHost(in.Relay)),
		SecretKeyPort:     []byte(strconv.Itoa(int(SubmissionPort(in.Relay)))),
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
	// Argo CD treats objects carrying app.kubernetes.io/instance as its own
	// and prunes them: a generated Secret never gets it from the template.
	delete(labels, LabelAppInstance)
	labels[LabelManagedBy] = ManagedByValue
	labels[LabelAccount] = acc.Name
	setKeyAnnotations(annotations, in.Key)
	if in.Key.PreviousDigest != "" {
		data[SecretKeyPreviousPasswordDigest] = []byte(in.Key.PreviousDigest)
	}
	if len(in.WebhookSecrets) > 0 {
		// A map of strings always encodes, in key order.
		data[SecretKeyWebhookSigningSecrets], _ = json.Marshal(in.WebhookSecrets)
	}
	var owners []metav1.OwnerReference
	if acc.Spec.SecretRetention == v1.SecretRetentionDelete {
		owners = []metav1.OwnerReference{AccountOwnerRef(acc)}
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:            CredentialsSecretName(acc),
			Namespace:       acc.Namespace,
			Labels:          labels,
			Annotations:     annotations,
			OwnerReferences: owners,
		},
		Type: credentialsSecretType,
		Data: data,
	}
}

// setKeyAnnotations records the rotation state beside the key, so that it
// survives operator restarts and a status that was lost.
func setKeyAnnotations(a map[string]string, k KeyState) {
	for _, name := range []string{AnnotationKeyIssuedAt, AnnotationRotateKeyHandled, AnnotationPreviousKeyExpiresAt} {
		delete(a, name) // the template must not forge them
	}
	if !k.IssuedAt.IsZero() {
		a[AnnotationKeyIssuedAt] = FormatTime(k.IssuedAt)
	}
	if k.RotateHandled != "" {
		a[AnnotationRotateKeyHandled] = k.RotateHandled
	}
	if k.PreviousDigest != "" {
		a[AnnotationPreviousKeyExpiresAt] = FormatTime(k.PreviousExpiry)
	}
}

// AccountOwnerRef makes the account the Secret's controller, so the Secret
// is garbage-collected with it.
func AccountOwnerRef(acc *v1.SmtpAccount) metav1.OwnerReference {
	return metav1.OwnerReference{
		APIVersion:         v1.GroupVersion.String(),
		Kind:               "SmtpAccount",
		Name:               acc.Name,
		UID:                acc.UID,
		Controller:         ptr.To(true),
		BlockOwnerDeletion: ptr.To(true),
	}
}

// KeyState is the key material a credentials Secret carries. Key is the
// plaintext key: it goes into the Secret and nowhere else (no log, event,
// status or error).
type KeyState struct {
	Key            string
	IssuedAt       time.Time // zero when unknown
	PreviousDigest string    // digest of the key before the last rotation; "" when none
	PreviousExpiry time.Time
	RotateHandled  string // the AnnotationRotateKey value last acted on
}

// KeyStateFromSecret reads the key material of an existing credentials
// Secret; a nil Secret has none.
func KeyStateFromSecret(s *corev1.Secret) KeyState {
	if s == nil {
		return KeyState{}
	}
	st := KeyState{
		Key:            string(s.Data[SecretKeyPassword]),
		IssuedAt:       ParseTime(s.Annotations[AnnotationKeyIssuedAt]),
		PreviousDigest: string(s.Data[SecretKeyPreviousPasswordDigest]),
		PreviousExpiry: ParseTime(s.Annotations[AnnotationPreviousKeyExpiresAt]),
		RotateHandled:  s.Annotations[AnnotationRotateKeyHandled],
	}
	if st.PreviousExpiry.IsZero() {
		// Without a readable expiry the previous key cannot be bounded: drop it.
		st.PreviousDigest = ""
	}
	return st
}

func ParseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

func FormatTime(t time.Time) string {
	return t.UTC().Format(time.RFC3339)
}

// WebhookSecretsFromSecret reads what CredentialsSecret wrote of the
// webhooks' signing secrets; none when it wrote none or it cannot be read.
func WebhookSecretsFromSecret(s *corev1.Secret) map[string]string {
	var out map[string]string
	if s != nil {
		json.Unmarshal(s.Data[SecretKeyWebhookSigningSecrets], &out)
	}
	return out
}
