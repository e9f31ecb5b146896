package controllers

// Labels and annotations the operator reads or writes.
const (
	// LabelManagedBy marks every object the operator creates. The operator
	// never copies app.kubernetes.io/instance onto generated Secrets: Argo CD
	// would see them as its own and prune them.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue is LabelManagedBy's value.
	ManagedByValue = "mailfleet-operator"
	// LabelRelay names the SmtpRelay an object belongs to.
	LabelRelay = "mailfleet.io/relay"
	// LabelAccount names the SmtpAccount a credentials Secret belongs to.
	LabelAccount = "mailfleet.io/account"
	// AnnotationRotateKey rotates an account's generated key when its value
	// changes; the previous key keeps working for the rotation grace period.
	AnnotationRotateKey = "mailfleet.io/rotate-key"
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
	// BindingType and BindingProvider are the values of type and provider.
	BindingType     = "smtp"
	BindingProvider = "mailfleet"
)
