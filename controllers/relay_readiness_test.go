package controllers

import (
	"strings"
	"testing"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/controllers/render"
)

func TestRelayReadiness(t *testing.T) {
	certWith := func(status cmmeta.ConditionStatus, msg string) *certmanagerv1.Certificate {
		c := &certmanagerv1.Certificate{ObjectMeta: metav1.ObjectMeta{Name: "mx"}}
		if status != "" {
			c.Status.Conditions = []certmanagerv1.CertificateCondition{{Type: certmanagerv1.CertificateConditionReady, Status: status, Message: msg}}
		}
		return c
	}
	tests := []struct {
		name       string
		obs        relayObservation
		wantReason string
		wantInMsg  string
	}{
		{"issuer missing wins", relayObservation{missingIssuer: `ClusterIssuer "le"`, certificate: certWith("", ""), replicas: 2},
			v1.ReasonIssuerNotFound, `ClusterIssuer "le" does not exist`},
		{"certificate without conditions", relayObservation{certificate: certWith("", ""), replicas: 2},
			v1.ReasonCertificateNotReady, `Certificate "mx" is not ready yet`},
		{"certificate false passes cert-manager's message on", relayObservation{certificate: certWith(cmmeta.ConditionFalse, "Issuing certificate as Secret does not exist"), replicas: 2},
			v1.ReasonCertificateNotReady, "Secret does not exist"},
		{"own secret missing", relayObservation{missingSecret: "own-tls", replicas: 2},
			v1.ReasonTLSSecretNotFound, `TLS Secret "own-tls"`},
		{"pods not ready", relayObservation{certificate: certWith(cmmeta.ConditionTrue, ""), replicas: 3, readyReplicas: 1},
			v1.ReasonReplicasNotReady, "1 of 3"},
		{"ready", relayObservation{certificate: certWith(cmmeta.ConditionTrue, ""), replicas: 3, readyReplicas: 3},
			v1.ReasonReady, "3 of 3"},
		{"ready without a fleet-wide budget says so", relayObservation{replicas: 3, readyReplicas: 3},
			v1.ReasonReady, "each pod admits 1/3 of every account's budget"},
		{"ready with the sidecar", relayObservation{replicas: 3, readyReplicas: 3, fleetBudget: true},
			v1.ReasonReady, "3 of 3 relay pods are ready"},
		{"redis password missing", relayObservation{replicas: 2, missingRef: &render.SecretRef{Field: "spec.rateLimit.redis.passwordSecretRef", Name: "redis-auth"}},
			v1.ReasonSecretNotFound, `Secret "redis-auth" (spec.rateLimit.redis.passwordSecretRef) does not exist`},
		{"scaled to zero is ready", relayObservation{missingSecret: "", replicas: 0},
			v1.ReasonReady, "0 of 0"},
		{"enough ready pods in the middle of a rollout is not ready", relayObservation{replicas: 2, readyReplicas: 3, fleetBudget: true,
			rollout: "rolling out: 1 relay pods of the previous template still running"},
			v1.ReasonReplicasNotReady, "previous template"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := relayReadiness(tt.obs)
			if v.reason != tt.wantReason || v.ready != (tt.wantReason == v1.ReasonReady) || !strings.Contains(v.message, tt.wantInMsg) {
				t.Errorf("verdict = %+v, want reason %s and a message containing %q", v, tt.wantReason, tt.wantInMsg)
			}
		})
	}
}

// TestRolloutPending: what a rolling update of the relay's Deployment
// still waits for, as kubectl rollout status judges it. The case of a real
// cluster: a spec change surged a third pod while the two old ones were
// ready, and the relay said Ready.
func TestRolloutPending(t *testing.T) {
	dep := func(gen, observed int64, replicas, updated, available int32) *appsv1.Deployment {
		return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Generation: gen}, Status: appsv1.DeploymentStatus{
			ObservedGeneration: observed, Replicas: replicas, UpdatedReplicas: updated, ReadyReplicas: replicas, AvailableReplicas: available}}
	}
	tests := []struct {
		name string
		d    *appsv1.Deployment
		want string
	}{
		{"new template not seen yet", dep(3, 2, 2, 2, 2), "not seen the new pod template"},
		{"surge: old pods ready, new one starting", dep(3, 3, 3, 1, 2), "1 of 2 relay pods run the current template"},
		{"old pod still running", dep(3, 3, 3, 2, 2), "1 relay pods of the previous template"},
		{"updated but not yet available", dep(3, 3, 2, 2, 1), "1 of 2 updated relay pods available"},
		{"complete", dep(3, 3, 2, 2, 2), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := rolloutPending(tt.d, 2)
			if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
				t.Errorf("rolloutPending = %q, want %q", got, tt.want)
			}
		})
	}
}
