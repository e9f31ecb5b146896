package controllers

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
)

// stalledReasons are the not-ready reasons only a person can fix; every
// other not-ready reason but Suspended (which is what someone asked for)
// resolves itself in time.
var stalledReasons = map[string]bool{
	v1.ReasonRelayNotFound:         true,
	v1.ReasonNamespaceNotAllowed:   true,
	v1.ReasonConflict:              true,
	v1.ReasonSecretNotOwned:        true,
	v1.ReasonSecretKeyMissing:      true,
	v1.ReasonAccountNotFound:       true,
	v1.ReasonIssuerNotFound:        true,
	v1.ReasonTLSSecretNotFound:     true,
	v1.ReasonRenderFailed:          true,
	v1.ReasonNameConflict:          true,
	v1.ReasonKeyTooShort:           true,
	v1.ReasonStreamConflict:        true,
	v1.ReasonImageNotAllowed:       true,
	v1.ReasonCertManagerMissing:    true,
	v1.ReasonInvalidSpec:           true,
	v1.ReasonSecretWriteFailed:     true,
	v1.ReasonCertificateNotAllowed: true,
	v1.ReasonTooManyLabels:         true,
}

// setReady records the Ready condition for the given generation, with
// Reconciling or Stalled beside it while the resource is not ready, so that
// kstatus-based tools (Flux's health checks) see progress and failure
// without being taught mailfleet's reasons.
func setReady(conds *[]metav1.Condition, generation int64, ready bool, reason, message string) {
	status := metav1.ConditionFalse
	if ready {
		status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(conds, metav1.Condition{
		Type:               v1.ConditionReady,
		Status:             status,
		ObservedGeneration: generation,
		Reason:             reason,
		Message:            message,
	})
	setAbnormal(conds, generation, v1.ConditionStalled, !ready && stalledReasons[reason], reason, message)
	setAbnormal(conds, generation, v1.ConditionReconciling, !ready && !stalledReasons[reason] && reason != v1.ReasonSuspended, reason, message)
}

// setAbnormal sets an abnormal-true condition when on, and removes it
// otherwise, as kstatus expects of Reconciling and Stalled.
func setAbnormal(conds *[]metav1.Condition, generation int64, condType string, on bool, reason, message string) {
	if !on {
		meta.RemoveStatusCondition(conds, condType)
		return
	}
	meta.SetStatusCondition(conds, metav1.Condition{
		Type:               condType,
		Status:             metav1.ConditionTrue,
		ObservedGeneration: generation,
		Reason:             reason,
		Message:            message,
	})
}
