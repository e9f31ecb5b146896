// Package v1alpha1test builds mailfleet API objects for tests: one builder
// per kind with options, after cert-manager's test/unit/gen, so that each
// test shows only the fields that matter to it.
package v1alpha1test

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
)

// RelayOption changes one thing of a test relay.
type RelayOption = func(*v1.SmtpRelay)

// Relay is a valid SmtpRelay ns/name: hostname smtp.example.com, TLS from
// the Issuer "ca" in its namespace, the queue on the chart's NATS.
func Relay(ns, name string, opts ...RelayOption) *v1.SmtpRelay {
	r := &v1.SmtpRelay{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1.SmtpRelaySpec{
			Hostname: "smtp.example.com",
			TLS:      v1.RelayTLS{IssuerRef: &v1.IssuerReference{Name: "ca"}},
			Queue:    v1.RelayQueue{NATS: v1.NATSQueue{URL: "nats://nats.mailfleet-system.svc:4222"}},
		},
	}
	for _, o := range opts {
		o(r)
	}
	return r
}

func WithReplicas(n int32) RelayOption { return func(r *v1.SmtpRelay) { r.Spec.Replicas = ptr.To(n) } }
func WithHostname(h string) RelayOption {
	return func(r *v1.SmtpRelay) { r.Spec.Hostname = h }
}
func WithBanner(b string) RelayOption { return func(r *v1.SmtpRelay) { r.Spec.Banner = b } }
func WithImage(i string) RelayOption  { return func(r *v1.SmtpRelay) { r.Spec.Image = i } }
func WithName(n string) RelayOption   { return func(r *v1.SmtpRelay) { r.Name = n } }
func WithListeners(ls ...v1.RelayListener) RelayOption {
	return func(r *v1.SmtpRelay) { r.Spec.Listeners = ls }
}

// WithSecretName takes the certificate from an existing Secret instead of
// cert-manager.
func WithSecretName(s string) RelayOption {
	return func(r *v1.SmtpRelay) { r.Spec.TLS = v1.RelayTLS{SecretName: s} }
}

// WithIssuer asks cert-manager's Issuer or ClusterIssuer (kind) name.
func WithIssuer(kind, name string) RelayOption {
	return func(r *v1.SmtpRelay) {
		r.Spec.TLS = v1.RelayTLS{IssuerRef: &v1.IssuerReference{Name: name, Kind: kind}}
	}
}

// WithCPURequest sets the relay container's CPU request.
func WithCPURequest(cpu string) RelayOption {
	return func(r *v1.SmtpRelay) {
		r.Spec.Resources = corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu)}}
	}
}

// WithRateLimit runs the rate-limit sidecar with rl.
func WithRateLimit(rl *v1.RelayRateLimit) RelayOption {
	return func(r *v1.SmtpRelay) { r.Spec.RateLimit = rl }
}
