package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SmtpRelaySpec declares a fleet of SMTP relays.
// +kubebuilder:validation:XValidation:rule="!has(self.listeners) || self.listeners.all(l, self.listeners.exists_one(m, m.port == l.port))",message="listeners: ports must be unique"
type SmtpRelaySpec struct {
	// Replicas is the number of relay pods.
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Hostname is the relay's public name: it appears in the SMTP greeting
	// and is the certificate's DNS name.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="hostname must be a lower-case DNS name such as smtp.example.com"
	Hostname string `json:"hostname"`

	// Banner follows "ESMTP" in the greeting.
	// +kubebuilder:default=mailfleet
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[ -~]*$`
	// +optional
	Banner string `json:"banner,omitempty"`

	// Listeners are the SMTP ports the relay serves. Default: 25, 587 and
	// 2525 with STARTTLS (587 requires it before AUTH) and 465 with implicit TLS.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	// +listType=map
	// +listMapKey=name
	// +optional
	Listeners []RelayListener `json:"listeners,omitempty"`

	// TLS says where the relay's certificate comes from.
	TLS RelayTLS `json:"tls"`

	// Accounts says which namespaces' SmtpAccounts may use this relay.
	// +optional
	Accounts RelayAccounts `json:"accounts,omitempty"`

	// DefaultBudgetPerMinute is the budget of an account that sets none:
	// messages per api_user per minute across the whole fleet.
	// +kubebuilder:default=30000
	// +kubebuilder:validation:Minimum=1
	// +optional
	DefaultBudgetPerMinute int32 `json:"defaultBudgetPerMinute,omitempty"`

	// Image overrides the relay image (default: the operator's own image).
	// +optional
	Image string `json:"image,omitempty"`

	// Resources of the relay container.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
}

// RelayListener is one SMTP port.
type RelayListener struct {
	// Name labels the port (Service port name, metrics).
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]{0,13}[a-z0-9])?$`
	Name string `json:"name"`
	// Port is the container and Service port.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
	// TLS is StartTLS (offered after EHLO) or Implicit (TLS from the first byte, as on 465).
	// +kubebuilder:validation:Enum=StartTLS;Implicit
	// +kubebuilder:default=StartTLS
	// +optional
	TLS ListenerTLS `json:"tls,omitempty"`
	// AuthRequiresTLS refuses AUTH until the session is encrypted.
	// +optional
	AuthRequiresTLS bool `json:"authRequiresTLS,omitempty"`
}

// ListenerTLS is how a listener starts TLS.
type ListenerTLS string

// Listener TLS modes.
const (
	ListenerStartTLS ListenerTLS = "StartTLS"
	ListenerImplicit ListenerTLS = "Implicit"
)

// RelayTLS names a cert-manager issuer, or an existing TLS Secret.
// +kubebuilder:validation:XValidation:rule="has(self.issuerRef) != has(self.secretName)",message="tls: set exactly one of issuerRef (cert-manager issues the certificate) or secretName (an existing kubernetes.io/tls Secret)"
type RelayTLS struct {
	// IssuerRef is the cert-manager Issuer or ClusterIssuer that signs the
	// relay's certificate.
	// +optional
	IssuerRef *IssuerReference `json:"issuerRef,omitempty"`
	// SecretName is an existing kubernetes.io/tls Secret in the relay's namespace.
	// +kubebuilder:validation:MinLength=1
	// +optional
	SecretName string `json:"secretName,omitempty"`
}

// IssuerReference names a cert-manager issuer.
type IssuerReference struct {
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// Kind is Issuer (in the relay's namespace) or ClusterIssuer.
	// +kubebuilder:validation:Enum=Issuer;ClusterIssuer
	// +kubebuilder:default=Issuer
	// +optional
	Kind string `json:"kind,omitempty"`
	// Group is the issuer's API group.
	// +kubebuilder:default=cert-manager.io
	// +optional
	Group string `json:"group,omitempty"`
}

// RelayAccounts restricts where accounts may attach from, as Gateway API's
// allowedRoutes does.
type RelayAccounts struct {
	// +optional
	Namespaces AccountNamespaces `json:"namespaces,omitempty"`
}

// AccountNamespaces selects namespaces.
// +kubebuilder:validation:XValidation:rule="self.from == 'Selector' ? has(self.selector) : !has(self.selector)",message="namespaces.selector is required when from is Selector, and only then"
type AccountNamespaces struct {
	// From is Same (the relay's namespace), All, or Selector.
	// +kubebuilder:validation:Enum=Same;All;Selector
	// +kubebuilder:default=Same
	// +optional
	From NamespacesFrom `json:"from,omitempty"`
	// Selector picks namespaces by label when From is Selector.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`
}

// NamespacesFrom says which namespaces may attach accounts.
type NamespacesFrom string

// Namespace policies.
const (
	NamespacesFromSame     NamespacesFrom = "Same"
	NamespacesFromAll      NamespacesFrom = "All"
	NamespacesFromSelector NamespacesFrom = "Selector"
)

// SmtpRelayStatus is what the operator observed.
type SmtpRelayStatus struct {
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// ReadyReplicas of the relay Deployment.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`
	// Endpoint is the in-cluster DNS name of the relay Service.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// Accounts is how many accounts are attached and usable.
	// +optional
	Accounts int32 `json:"accounts,omitempty"`
}

// SmtpRelay is a fleet of authenticated SMTP relays.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=mailfleet
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Replicas",type=integer,JSONPath=`.status.readyReplicas`
// +kubebuilder:printcolumn:name="Hostname",type=string,JSONPath=`.spec.hostname`
// +kubebuilder:printcolumn:name="Accounts",type=integer,JSONPath=`.status.accounts`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SmtpRelay struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   SmtpRelaySpec   `json:"spec,omitempty"`
	Status SmtpRelayStatus `json:"status,omitempty"`
}

// SmtpRelayList is a list of SmtpRelay.
// +kubebuilder:object:root=true
type SmtpRelayList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SmtpRelay `json:"items"`
}

func init() {
	SchemeBuilder.Register(&SmtpRelay{}, &SmtpRelayList{})
}
