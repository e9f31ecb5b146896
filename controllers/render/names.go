package render

// Labels and annotations the operator reads or writes.
const (
	// LabelManagedBy marks every object the operator creates. The operator
	// never copies app.kubernetes.io/instance onto generated Secrets: Argo CD
	// would see them as its own and prune them.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue is LabelManagedBy's value.
	ManagedByValue = "mailfleet-operator"
	// LabelAppName and LabelAppInstance are Kubernetes' recommended labels
	// (app.kubernetes.io/name, app.kubernetes.io/instance) on the relay's objects.
	LabelAppName     = "app.kubernetes.io/name"
	LabelAppInstance = "app.kubernetes.io/instance"
	// LabelRelay names the SmtpRelay an object belongs to.
	LabelRelay = "mailfleet.io/relay"
	// LabelAccount names the SmtpAccount a credentials Secret belongs to.
	LabelAccount = "mailfleet.io/account"
	// AnnotationRotateKey rotates an account's generated key when its value
	// changes; the previous key keeps working for the rotation grace period.
	AnnotationRotateKey = "mailfleet.io/rotate-key"

	// AnnotationRotateKeyHandled, on a credentials Secret, is the last
	// AnnotationRotateKey value acted on, so a rotation happens once per value.
	AnnotationRotateKeyHandled = "mailfleet.io/rotate-key-handled"
	// AnnotationKeyIssuedAt, on a credentials Secret, is when its key was
	// issued (RFC 3339).
	AnnotationKeyIssuedAt = "mailfleet.io/key-issued-at"
	// AnnotationPreviousKeyExpiresAt, on a credentials Secret, is when the key
	// before the last rotation stops working (RFC 3339).
	AnnotationPreviousKeyExpiresAt = "mailfleet.io/previous-key-expires-at"
	// AnnotationShardAccounts, on a credentials shard Secret, is how many
	// accounts it publishes: the relay's status.accounts is their sum, read
	// from Secret metadata, which the operator caches, rather than from
	// shard data, which it does not.
	AnnotationShardAccounts = "mailfleet.io/accounts"
)

// Keys of the credentials Secret, after the Service Binding specification
// (type, provider, host, port, username, password), so binding libraries
// and people read it without knowing mailfleet.
const (
	SecretKeyType     = "type"
	SecretKeyProvider = "provider"
	SecretKeyHost     = "host"
	SecretKeyPort     = "port"
	SecretKeyUsername = "username"
	SecretKeyPassword = "password"
	// SecretKeyLabelUsernamePrefix + labelId holds api_user#label_id, one per label.
	SecretKeyLabelUsernamePrefix = "username-"
	// SecretKeyPreviousPasswordDigest holds the digest (wire.Digest
	// format), never the key, of the key before the last rotation while its
	// grace period runs.
	SecretKeyPreviousPasswordDigest = "previous-password-sha256"
	// SecretKeyWebhookSigningSecrets holds the signing secrets of the
	// account's webhooks, by URL, as JSON: read from the Secrets their
	// signingSecretRefs name, for the credentials publisher (which reads
	// only the operator's own Secrets).
	SecretKeyWebhookSigningSecrets = "webhook-signing-secrets"
	// BindingType and BindingProvider are the values of type and provider.
	BindingType     = "smtp"
	BindingProvider = "mailfleet"
)
