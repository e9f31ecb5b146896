package controllers

import (
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
)

// TestKstatusConditions checks what kstatus (Flux) reads beside Ready:
// Reconciling while the resource will become ready by itself, Stalled when
// a person must act, neither once ready or when suspended on purpose.
func TestKstatusConditions(t *testing.T) {
	var conds []metav1.Condition
	check := func(ready bool, reason string, wantReconciling, wantStalled bool) {
		t.Helper()
		setReady(&conds, 3, ready, reason, "detail")
		rec := meta.IsStatusConditionTrue(conds, v1.ConditionReconciling)
		stalled := meta.IsStatusConditionTrue(conds, v1.ConditionStalled)
		if rec != wantReconciling || stalled != wantStalled {
			t.Errorf("%s: Reconciling %v Stalled %v, want %v %v", reason, rec, stalled, wantReconciling, wantStalled)
		}
		if !rec && meta.FindStatusCondition(conds, v1.ConditionReconciling) != nil ||
			!stalled && meta.FindStatusCondition(conds, v1.ConditionStalled) != nil {
			t.Errorf("%s: a False Reconciling or Stalled condition was left; kstatus wants them absent", reason)
		}
	}
	check(false, v1.ReasonCertificateNotReady, true, false)
	check(false, v1.ReasonIssuerNotFound, false, true)
	check(false, v1.ReasonSecretNotFound, true, false)
	check(false, v1.ReasonConflict, false, true)
	check(false, v1.ReasonSuspended, false, false)
	check(true, v1.ReasonReady, false, false)
	if c := meta.FindStatusCondition(conds, v1.ConditionReady); c == nil || c.ObservedGeneration != 3 {
		t.Errorf("Ready = %+v, want observedGeneration 3", c)
	}
}
