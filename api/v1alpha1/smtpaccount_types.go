package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SecretRetention is what happens to an account's credentials Secret when
// the account no longer uses it.
type SecretRetention string

// Secret retention policies.
const (
	SecretRetentionRetain SecretRetention = "Retain"
	SecretRetentionDelete SecretRetention = "Delete"
)

// SmtpAccountSpec declares a sender: who may submit mail through a relay,
// with which key and within which budget.
// +kubebuilder:validation:XValidation:rule="has(oldSelf.apiUser) == has(self.apiUser)",message="apiUser cannot be added or removed after creation; create a new SmtpAccount instead"
type SmtpAccountSpec struct {
	// RelayRef names the SmtpRelay this account sends through.
	RelayRef RelayReference `json:"relayRef"`

	// APIUser is the SMTP username. Default: the SmtpAccount's name. It is
	// unique per relay and cannot change.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._-]*$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="apiUser is immutable; create a new SmtpAccount instead"
	// +optional
	APIUser string `json:"apiUser,omitempty"`

	// BudgetPerMinute is how many recipients this account may send to per
	// minute across the fleet; a message spends one unit per recipient, all
	// or none. Default: the relay's defaultBudgetPerMinute.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000000
	// +optional
	BudgetPerMinute *int32 `json:"budgetPerMinute,omitempty"`

	// Limits caps what one message of this account may do.
	// +optional
	Limits *AccountLimits `json:"limits,omitempty"`

	// AllowedSenderDomains restricts MAIL FROM to these domains; an entry
	// "*.example.com" allows its subdomains. Empty: any sender.
	// +kubebuilder:validation:MaxItems=100
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+$`
	// +listType=set
	// +optional
	AllowedSenderDomains []string `json:"allowedSenderDomains,omitempty"`

	// SenderPolicy says what allowedSenderDomains is checked against:
	// EnvelopeAndHeader (the default) checks MAIL FROM and every address of
	// the message's From header, which is what recipients see; Envelope
	// checks MAIL FROM only.
	// +kubebuilder:validation:Enum=Envelope;EnvelopeAndHeader
	// +optional
	SenderPolicy string `json:"senderPolicy,omitempty"`

	// Suspended stops the account from authenticating, without deleting it.
	// +optional
	Suspended bool `json:"suspended,omitempty"`

	// Key says where the account's key comes from.
	// +optional
	Key AccountKey `json:"key,omitempty"`

	// SecretName is the credentials Secret the operator writes in this
	// namespace. Default: <name>-smtp-credentials.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	// +optional
	SecretName string `json:"secretName,omitempty"`

	// SecretRetention says what becomes of the credentials Secret when the
	// account is deleted or spec.secretName changes. Retain (the default,
	// as cert-manager keeps a Certificate's Secret) leaves it, labelled
	// with the account's name, and an account of that name created again
	// adopts it with its key; Delete lets the garbage collector remove it
	// with the account.
	// +kubebuilder:validation:Enum=Retain;Delete
	// +kubebuilder:default=Retain
	// +optional
	SecretRetention SecretRetention `json:"secretRetention,omitempty"`

	// SecretTemplate adds labels and annotations to the credentials Secret.
	// +optional
	SecretTemplate *SecretTemplate `json:"secretTemplate,omitempty"`

	// Webhooks receive the account's delivery events as signed JSON batches
	// (docs/events.md).
	// +kubebuilder:validation:MaxItems=10
	// +listType=map
	// +listMapKey=url
	// +optional
	Webhooks []AccountWebhook `json:"webhooks,omitempty"`
}

// AccountWebhook is an endpoint that receives the account's delivery
// events, each POST signed with a secret of the tenant's own.
type AccountWebhook struct {
	// URL receives the events: an absolute https:// URL with a host,
	// without user information or a fragment. The relays the operator
	// runs post to https:// only.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && self.startsWith('https://')",message="webhooks[].url must be an absolute https:// URL, such as https://hooks.example.com/mailfleet: the relays post events to https:// only"
	// +kubebuilder:validation:XValidation:rule="!isURL(self) || url(self).getHostname() != ''",message="webhooks[].url must name a host, such as https://hooks.example.com/mailfleet"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^[a-zA-Z]+://[^/?#]*@')",message="webhooks[].url must not carry user:password@; the endpoint authenticates the relay by the signature"
	// +kubebuilder:validation:XValidation:rule="!self.contains('#')",message="webhooks[].url must not have a #fragment"
	URL string `json:"url"`
	// Events are the event types it receives; empty: all of them.
	// +kubebuilder:validation:MaxItems=6
	// +kubebuilder:validation:items:Enum=queued;delivered;deferred;bounced;expired;suppressed
	// +listType=set
	// +optional
	Events []string `json:"events,omitempty"`
	// SigningSecretRef names the Secret, in this namespace, whose key holds
	// the secret each POST is signed with (16 to 256 characters): the
	// X-Mailfleet-Signature header. Changing the Secret changes the
	// signature within seconds.
	SigningSecretRef WebhookSecretReference `json:"signingSecretRef"`
}

// WebhookSecretReference names a key of a Secret in the account's
// namespace.
type WebhookSecretReference struct {
	// Name of the Secret, in the account's namespace: there is no
	// namespace to name, so an account reads no other namespace's Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="signingSecretRef.name must be the name of a Secret in this namespace: lower case letters, digits, '-' and '.'"
	Name string `json:"name"`
	// Key in the Secret's data.
	// +kubebuilder:default=signing-secret
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[-._a-zA-Z0-9]+$')",message="signingSecretRef.key must be a key of a Secret's data: letters, digits, '-', '_' and '.'"
	// +optional
	Key string `json:"key,omitempty"`
}

// AccountLimits caps one message.
type AccountLimits struct {
	// MaxRecipients is how many RCPT TO one message may have; the next gets
	// 452 4.5.3 Too many recipients and the client sends the rest in another
	// message. Default 100 (the relay's own maxRecipients still applies).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	MaxRecipients *int32 `json:"maxRecipients,omitempty"`
}

// RelayReference names an SmtpRelay.
type RelayReference struct {
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// Namespace of the relay. Default: the account's namespace.
	// +optional
	Namespace string `json:"namespace,omitempty"`
}

// AccountKey is either generated by the operator or read from a Secret the
// user provides (sealed-secrets, External Secrets).
// +kubebuilder:validation:XValidation:rule="!(has(self.generated) && has(self.secretRef))",message="key: set either generated or secretRef, not both"
type AccountKey struct {
	// Generated makes the operator generate the key (the default).
	// +optional
	Generated *GeneratedKey `json:"generated,omitempty"`
	// SecretRef reads the key from an existing Secret in this namespace.
	// +optional
	SecretRef *SecretKeyReference `json:"secretRef,omitempty"`
	// RotationGracePeriod is how long the previous key keeps working after a
	// rotation (annotate the account with mailfleet.io/rotate-key=<any new
	// value>, or change the referenced Secret).
	// +kubebuilder:default="24h"
	// +optional
	RotationGracePeriod *metav1.Duration `json:"rotationGracePeriod,omitempty"`
}

// GeneratedKey configures generated keys.
type GeneratedKey struct {
	// Bytes of randomness in the key.
	// +kubebuilder:validation:Minimum=16
	// +kubebuilder:validation:Maximum=64
	// +kubebuilder:default=32
	// +optional
	Bytes int32 `json:"bytes,omitempty"`
}

// SecretKeyReference names a key in a Secret.
type SecretKeyReference struct {
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// Key in the Secret's data.
	// +kubebuilder:default=api-key
	// +optional
	Key string `json:"key,omitempty"`
}

// SecretTemplate is copied onto a generated Secret.
type SecretTemplate struct {
	// Labels of the credentials Secret. The operator's own labels win.
	// +kubebuilder:validation:MaxProperties=32
	// +kubebuilder:validation:XValidation:rule="self.all(k, k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))",message="secretTemplate.labels: keys must be label keys such as team or example.com/team"
	// +optional
	Labels map[string]LabelValue `json:"labels,omitempty"`
	// Annotations of the credentials Secret.
	// +kubebuilder:validation:MaxProperties=32
	// +kubebuilder:validation:XValidation:rule="self.all(k, k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))",message="secretTemplate.annotations: keys must be annotation keys such as example.com/owner"
	// +kubebuilder:validation:XValidation:rule="self.all(k, size(self[k]) <= 4096)",message="secretTemplate.annotations: values may have at most 4096 characters"
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
}

// LabelValue is a Kubernetes label value: at most 63 letters, digits, '-',
// '_' or '.', beginning and ending with a letter or digit, or empty.
// +kubebuilder:validation:MaxLength=63
// +kubebuilder:validation:Pattern=`^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$`
type LabelValue string

// SmtpAccountStatus is what the operator observed.
type SmtpAccountStatus struct {
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// APIUser is the effective SMTP username.
	// +optional
	APIUser string `json:"apiUser,omitempty"`
	// SecretName is the credentials Secret.
	// +optional
	SecretName string `json:"secretName,omitempty"`
	// KeyRotatedAt is when the current key was issued.
	// +optional
	KeyRotatedAt *metav1.Time `json:"keyRotatedAt,omitempty"`
	// PreviousKeyExpiresAt is when the key before the last rotation stops working.
	// +optional
	PreviousKeyExpiresAt *metav1.Time `json:"previousKeyExpiresAt,omitempty"`
}

// SmtpAccount is a sender allowed to submit mail through an SmtpRelay.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=mailfleet
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Relay",type=string,JSONPath=`.spec.relayRef.name`
// +kubebuilder:printcolumn:name="API User",type=string,JSONPath=`.status.apiUser`
// +kubebuilder:printcolumn:name="Secret",type=string,JSONPath=`.status.secretName`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="an SmtpAccount's name must be at most 63 characters: it labels the account's credentials Secret"
type SmtpAccount struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   SmtpAccountSpec   `json:"spec"`
	Status SmtpAccountStatus `json:"status,omitempty"`
}

// SmtpAccountList is a list of SmtpAccount.
// +kubebuilder:object:root=true
type SmtpAccountList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SmtpAccount `json:"items"`
}

func init() {
	SchemeBuilder.Register(&SmtpAccount{}, &SmtpAccountList{})
}
