package v1alpha1

// Condition types. Every resource reports Ready; the others say which part
// is not.
const (
	// ConditionReady is true when the resource does what it declares.
	ConditionReady = "Ready"
)

// Condition reasons, CamelCase as metav1.Condition requires. Messages carry
// the detail a person needs.
const (
	ReasonReady               = "Ready"
	ReasonRelayNotFound       = "RelayNotFound"
	ReasonNamespaceNotAllowed = "NamespaceNotAllowed"
	ReasonConflict            = "Conflict"
	ReasonSecretNotFound      = "SecretNotFound"
	ReasonSecretKeyMissing    = "SecretKeyMissing"
	ReasonSecretNotOwned      = "SecretNotOwned"
	ReasonSuspended           = "Suspended"
	ReasonAccountNotFound     = "AccountNotFound"
	ReasonAccountNotReady     = "AccountNotReady"
	ReasonIssuerNotFound      = "IssuerNotFound"
	ReasonCertificateNotReady = "CertificateNotReady"
	ReasonTLSSecretNotFound   = "TLSSecretNotFound"
	ReasonReplicasNotReady    = "ReplicasNotReady"
	ReasonRenderFailed        = "RenderFailed"
)
