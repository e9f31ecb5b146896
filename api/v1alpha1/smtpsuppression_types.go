package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SmtpSuppressionSpec lists addresses an account sends no mail to, kept
// with kubectl (or GitOps) beside the bounces the relays record.
type SmtpSuppressionSpec struct {
	// AccountRef names the SmtpAccount, in this namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="accountRef is immutable; create a new SmtpSuppression instead"
	AccountRef string `json:"accountRef"`

	// Addresses are the recipients suppressed, as in RCPT TO.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=1000
	// +kubebuilder:validation:items:MaxLength=254
	// +kubebuilder:validation:items:Pattern=`^[^\s@<>()\[\],;:"\\]+@[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?([.][A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)+$`
	// +listType=set
	Addresses []string `json:"addresses"`

	// Reason is for people; the API and the suppressed events show it.
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[^\x00-\x1f\x7f]*$`
	// +optional
	Reason string `json:"reason,omitempty"`

	// ExpiresAt ends the suppression; unset: until the object is deleted.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`
}

// SmtpSuppressionStatus is what the operator found.
type SmtpSuppressionStatus struct {
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// SmtpSuppression is a list of recipients an SmtpAccount sends no mail to.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=mailfleet
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Account",type=string,JSONPath=`.spec.accountRef`
// +kubebuilder:printcolumn:name="Expires",type=date,JSONPath=`.spec.expiresAt`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SmtpSuppression struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   SmtpSuppressionSpec   `json:"spec"`
	Status SmtpSuppressionStatus `json:"status,omitempty"`
}

// SmtpSuppressionList is a list of SmtpSuppression.
// +kubebuilder:object:root=true
type SmtpSuppressionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SmtpSuppression `json:"items"`
}

func init() {
	SchemeBuilder.Register(&SmtpSuppression{}, &SmtpSuppressionList{})
}
