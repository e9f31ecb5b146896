package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SmtpLabelSpec declares a label of an account, used to log in as
// api_user#label_id so mail and statistics can be told apart.
type SmtpLabelSpec struct {
	// AccountRef names the SmtpAccount, in this namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="accountRef is immutable; create a new SmtpLabel instead"
	AccountRef string `json:"accountRef"`

	// LabelID is the part after '#' in the username.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._-]*$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="labelId is immutable; create a new SmtpLabel instead"
	LabelID string `json:"labelId"`

	// Description is for people.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Description string `json:"description,omitempty"`

	// Suspended stops logins with this label.
	// +optional
	Suspended bool `json:"suspended,omitempty"`
}

// SmtpLabelStatus is what the operator observed.
type SmtpLabelStatus struct {
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// Username is what the client logs in with: api_user#label_id.
	// +optional
	Username string `json:"username,omitempty"`
}

// SmtpLabel is a label of an SmtpAccount.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=mailfleet
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Account",type=string,JSONPath=`.spec.accountRef`
// +kubebuilder:printcolumn:name="Label",type=string,JSONPath=`.spec.labelId`
// +kubebuilder:printcolumn:name="Username",type=string,JSONPath=`.status.username`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SmtpLabel struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   SmtpLabelSpec   `json:"spec"`
	Status SmtpLabelStatus `json:"status,omitempty"`
}

// SmtpLabelList is a list of SmtpLabel.
// +kubebuilder:object:root=true
type SmtpLabelList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SmtpLabel `json:"items"`
}

func init() {
	SchemeBuilder.Register(&SmtpLabel{}, &SmtpLabelList{})
}
