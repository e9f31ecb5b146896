package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SmtpDomainSpec declares a sender domain a tenant sends from. The operator
// makes its DKIM keys, says in status which DNS records to publish, and
// checks DNS until they are there: an account sends from a domain and signs
// for it only once its SmtpDomain is Verified.
type SmtpDomainSpec struct {
	// Domain is the sender domain, e.g. acme.example. It covers its
	// subdomains too (news.acme.example is signed as acme.example, which
	// DMARC's relaxed alignment accepts).
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="domain is immutable; create a new SmtpDomain instead"
	Domain string `json:"domain"`

	// DKIM tunes the domain's signing keys.
	// +optional
	DKIM DomainDKIM `json:"dkim,omitempty"`

	// ExternalDNS has the operator write the DKIM records into a
	// DNSEndpoint (externaldns.k8s.io/v1alpha1) named <name>-dkim in this
	// namespace, for external-dns to publish. Only for domains the
	// platform lets the operator publish (its --external-dns-domains).
	// +optional
	ExternalDNS bool `json:"externalDNS,omitempty"`
}

// DomainDKIM tunes a domain's DKIM keys.
// +kubebuilder:validation:XValidation:rule="!has(self.rotateAfter) || duration(self.rotateAfter) >= duration('24h')",message="dkim.rotateAfter must be at least 24h: each rotation waits for DNS to publish the new record"
// +kubebuilder:validation:XValidation:rule="!has(self.gracePeriod) || duration(self.gracePeriod) >= duration('1h')",message="dkim.gracePeriod must be at least 1h: receivers verify mail signed with the old key for a while after it was sent"
type DomainDKIM struct {
	// SelectorPrefix starts every selector: the keys are published at
	// <prefix>-<n>._domainkey.<domain>, n counting rotations from 1.
	// Default: mailfleet.
	// +kubebuilder:validation:MaxLength=40
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="dkim.selectorPrefix is immutable: the published records carry it"
	// +optional
	SelectorPrefix string `json:"selectorPrefix,omitempty"`

	// Ed25519 adds a second signature with an Ed25519 key (RFC 8463) beside
	// the RSA-2048 one; receivers that do not know Ed25519 ignore it.
	// +optional
	Ed25519 bool `json:"ed25519,omitempty"`

	// RotateAfter makes a new key once the signing one is this old: the
	// new selector is published in status, signing switches to it once it
	// resolves, and the old record stays for gracePeriod. Unset: no
	// rotation.
	// +optional
	RotateAfter *metav1.Duration `json:"rotateAfter,omitempty"`

	// GracePeriod is how long a rotated-out key's record must stay
	// published after signing switched away from it (default 168h, 7
	// days): receivers verify a message when it arrives, possibly days
	// after it was sent.
	// +optional
	GracePeriod *metav1.Duration `json:"gracePeriod,omitempty"`
}

// Key states in an SmtpDomain's status.
const (
	// DKIMKeyPending: made, not yet found in DNS; nothing signs with it.
	DKIMKeyPending = "Pending"
	// DKIMKeyActive: the relays sign with it.
	DKIMKeyActive = "Active"
	// DKIMKeyRetiring: signing switched away from it; its record must stay
	// published until retireAt.
	DKIMKeyRetiring = "Retiring"
)

// DNS record states in an SmtpDomain's status.
const (
	DNSRecordFound    = "Found"
	DNSRecordMissing  = "Missing"
	DNSRecordMismatch = "Mismatch"
	DNSRecordUnknown  = "Unknown"
)

// DNSRecord is a record to publish, and what the operator last found.
type DNSRecord struct {
	// Purpose is DKIM, DKIM-Ed25519, SPF or DMARC.
	Purpose string `json:"purpose"`
	// Name is the record's owner name, e.g. mailfleet-1._domainkey.acme.example.
	Name string `json:"name"`
	// Type is TXT.
	Type string `json:"type"`
	// Value is the record's text, exactly as it must be published.
	Value string `json:"value"`
	// Required records must be found for the domain to be Verified; the
	// others are advice (a domain often has SPF and DMARC records of its
	// own that say more).
	Required bool `json:"required"`
	// State is Found, Missing, Mismatch (a record is there, with another
	// value) or Unknown (not looked up yet, or the lookup failed).
	State string `json:"state"`
}

// DKIMKeyStatus is one of a domain's keys.
type DKIMKeyStatus struct {
	Selector string `json:"selector"`
	// Algorithm is rsa-sha256 or ed25519-sha256.
	Algorithm string `json:"algorithm"`
	// State is Pending, Active or Retiring.
	State string `json:"state"`
	// CreatedAt is when the key was made.
	CreatedAt metav1.Time `json:"createdAt"`
	// ActiveSince is when the relays started signing with it.
	// +optional
	ActiveSince *metav1.Time `json:"activeSince,omitempty"`
	// RetireAt is when a retiring key is deleted; its record may be
	// removed from DNS after that.
	// +optional
	RetireAt *metav1.Time `json:"retireAt,omitempty"`
}

// SmtpDomainStatus is what the operator made and found.
type SmtpDomainStatus struct {
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// Selector is the selector the relays sign with; empty until the first
	// key is verified.
	// +optional
	Selector string `json:"selector,omitempty"`
	// SecretName is the Secret holding the private keys.
	// +optional
	SecretName string `json:"secretName,omitempty"`
	// Records are the DNS records to publish, with what the last check
	// found.
	// +optional
	Records []DNSRecord `json:"records,omitempty"`
	// Keys are the domain's DKIM keys.
	// +optional
	Keys []DKIMKeyStatus `json:"keys,omitempty"`
	// DNSEndpoint is the DNSEndpoint the operator writes the records
	// into, with spec.externalDNS.
	// +optional
	DNSEndpoint string `json:"dnsEndpoint,omitempty"`
	// LastCheckedAt is when DNS was last looked up.
	// +optional
	LastCheckedAt *metav1.Time `json:"lastCheckedAt,omitempty"`
}

// SmtpDomain is a sender domain with its DKIM keys and DNS records.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=mailfleet
// +kubebuilder:printcolumn:name="Domain",type=string,JSONPath=`.spec.domain`
// +kubebuilder:printcolumn:name="Verified",type=string,JSONPath=`.status.conditions[?(@.type=="Verified")].status`
// +kubebuilder:printcolumn:name="Selector",type=string,JSONPath=`.status.selector`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Verified")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 58",message="an SmtpDomain's name must be at most 58 characters: its key Secret is named <name>-dkim"
type SmtpDomain struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   SmtpDomainSpec   `json:"spec"`
	Status SmtpDomainStatus `json:"status,omitempty"`
}

// SmtpDomainList is a list of SmtpDomain.
// +kubebuilder:object:root=true
type SmtpDomainList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SmtpDomain `json:"items"`
}

func init() {
	SchemeBuilder.Register(&SmtpDomain{}, &SmtpDomainList{})
}
