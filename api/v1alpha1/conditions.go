package v1alpha1

// Condition types. Every resource reports Ready; the others say which part
// is not.
const (
	// ConditionReady is true when the resource does what it declares.
	ConditionReady = "Ready"
	// ConditionReconciling is present (True) while the resource is not
	// ready yet but will be without anyone's help: a certificate being
	// issued, pods starting, a Secret another controller is writing.
	ConditionReconciling = "Reconciling"
	// ConditionStalled is present (True) when the resource cannot become
	// ready until a person changes something; the message says what.
	// Reconciling and Stalled are the conditions kstatus reads (Flux's
	// health checks, cli-utils).
	ConditionStalled = "Stalled"
	// ConditionWebhooksReady is present on an SmtpAccount with webhooks:
	// True when every one of them is published to the relay, False when
	// one is left out (its signing secret is missing or unusable). The
	// account's mail flows either way.
	ConditionWebhooksReady = "WebhooksReady"
	// ConditionWebhookDisabled is present (True) on an SmtpAccount while
	// one of its webhooks is disabled because its endpoint answered 410
	// Gone: the relays post nothing more to it, and its events wait in the
	// stream. The message says which and how to enable it again.
	ConditionWebhookDisabled = "WebhookDisabled"
	// ConditionVerified is on an SmtpDomain: True while DNS publishes the
	// keys the relays sign with, which is what lets its namespace's
	// accounts send from the domain.
	ConditionVerified = "Verified"
	// ConditionSenderDomainsVerified is on an SmtpAccount of a relay that
	// requires verified sender domains: False names the domains it may not
	// send from yet. The account authenticates either way.
	ConditionSenderDomainsVerified = "SenderDomainsVerified"
)

// Condition reasons, CamelCase as metav1.Condition requires. Messages carry
// the detail a person needs.
const (
	ReasonReady                   = "Ready"
	ReasonRelayNotFound           = "RelayNotFound"
	ReasonNamespaceNotAllowed     = "NamespaceNotAllowed"
	ReasonConflict                = "Conflict"
	ReasonSecretNotFound          = "SecretNotFound"
	ReasonSecretKeyMissing        = "SecretKeyMissing"
	ReasonSecretNotOwned          = "SecretNotOwned"
	ReasonSuspended               = "Suspended"
	ReasonAccountNotFound         = "AccountNotFound"
	ReasonAccountNotReady         = "AccountNotReady"
	ReasonIssuerNotFound          = "IssuerNotFound"
	ReasonCertificateNotReady     = "CertificateNotReady"
	ReasonTLSSecretNotFound       = "TLSSecretNotFound"
	ReasonReplicasNotReady        = "ReplicasNotReady"
	ReasonRenderFailed            = "RenderFailed"
	ReasonNameConflict            = "NameConflict"
	ReasonKeyTooShort             = "KeyTooShort"
	ReasonStreamConflict          = "StreamConflict"
	ReasonImageNotAllowed         = "ImageNotAllowed"
	ReasonCertManagerMissing      = "CertManagerMissing"
	ReasonInvalidSpec             = "InvalidSpec"
	ReasonSecretWriteFailed       = "SecretWriteFailed"
	ReasonCertificateNotAllowed   = "CertificateNotAllowed"
	ReasonTooManyLabels           = "TooManyLabels"
	ReasonSigningSecretNotFound   = "SigningSecretNotFound"
	ReasonSigningSecretInvalid    = "SigningSecretInvalid"
	ReasonWebhookInvalid          = "WebhookInvalid"
	ReasonSigningSecretNotAllowed = "SigningSecretNotAllowed"
	ReasonEndpointGone            = "EndpointGone"
	ReasonVerified                = "Verified"
	ReasonDKIMRecordMissing       = "DKIMRecordMissing"
	ReasonDKIMRecordMismatch      = "DKIMRecordMismatch"
	ReasonDNSLookupFailed         = "DNSLookupFailed"
	ReasonSenderDomainNotVerified = "SenderDomainNotVerified"
	ReasonExternalDNSNotAllowed   = "ExternalDNSNotAllowed"
	ReasonExternalDNSMissing      = "ExternalDNSMissing"
	ReasonExpired                 = "Expired"
	ReasonTooManyAddresses        = "TooManyAddresses"
)
