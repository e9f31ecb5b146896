package render

import (
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/config"
)

// The rate-limit sidecar inside the relay pod.
const (
	ratelimitContainerName   = "ratelimit"
	ratelimitMetricsPortName = "rl-metrics"
	ratelimitMetricsPort     = 9091
	ratelimitSecretsDir      = "/etc/mailfleet/redis"
	ratelimitPasswordFile    = ratelimitSecretsDir + "/password/password"
	ratelimitCAFile          = ratelimitSecretsDir + "/ca/ca.crt"
	// ratelimitReplicasEnv is the fleet size the sidecar divides budgets by
	// while Redis is unavailable (the same name cmd/mailfleet reads).
	ratelimitReplicasEnv = "MAILFLEET_RATELIMIT_REPLICAS"
)

// relayBudgetShares is how many pods divide each budget among them: the
// relay's own share without the sidecar, the sidecar's fallback with it.
// A fleet scaled to zero still counts as one, so no share is ever empty.
func relayBudgetShares(relay *v1.SmtpRelay) int {
	return int(max(Replicas(relay), 1))
}

// relayBudget is the relay's budget section: the sidecar on loopback when
// the relay has one, else each pod's share of every budget.
func relayBudget(relay *v1.SmtpRelay) config.Budget {
	if relay.Spec.RateLimit == nil {
		return config.Budget{PodShare: relayBudgetShares(relay)}
	}
	return config.Budget{Sidecar: &config.BudgetSidecar{
		Address: config.DefaultSidecarAddress,
		Timeout: config.Duration{Duration: config.DefaultSidecarTimeout},
	}}
}

// ratelimitInitContainers is the sidecar as a Kubernetes native sidecar (an
// init container that keeps running): the kubelet starts it, and waits for
// its startup probe, before the relay, and stops it only after the relay
// has drained, so no message is ever asked about with nobody to answer.
func ratelimitInitContainers(relay *v1.SmtpRelay, image string) []corev1.Container {
	rl := relay.Spec.RateLimit
	if rl == nil {
		return nil
	}
	c := corev1.Container{
		Name:          ratelimitContainerName,
		Image:         image,
		RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways),
		Args:          ratelimitArgs(relay),
		// From the ConfigMap rather than written into the template, so that
		// scaling does not roll the pods (see relayConfigMap).
		Env: []corev1.EnvVar{{Name: ratelimitReplicasEnv, ValueFrom: &corev1.EnvVarSource{
			ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: ConfigMapName(relay.Name)},
				Key:                  relayReplicasKey,
			},
		}}},
		Ports: []corev1.ContainerPort{{Name: ratelimitMetricsPortName, ContainerPort: ratelimitMetricsPort, Protocol: corev1.ProtocolTCP}},
		StartupProbe: &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString(ratelimitMetricsPortName)}},
			PeriodSeconds:    1,
			FailureThreshold: 30,
		},
		LivenessProbe: &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString(ratelimitMetricsPortName)}},
			PeriodSeconds:    10,
			FailureThreshold: 3,
		},
		Resources:       withDefaultRequests(rl.Resources, ratelimitDefaultRequests),
		SecurityContext: relayContainerSecurity(),
	}
	for _, m := range ratelimitMounts(relay) {
		c.VolumeMounts = append(c.VolumeMounts, m.volumeMount())
	}
	return []corev1.Container{c}
}

func ratelimitArgs(relay *v1.SmtpRelay) []string {
	rl := relay.Spec.RateLimit
	args := []string{"ratelimit",
		"--listen", config.DefaultSidecarAddress,
		"--metrics-address", ":" + strconv.Itoa(ratelimitMetricsPort),
		"--redis-address", rl.Redis.Address,
		"--failure-mode", strings.ToLower(string(ratelimitFailureMode(rl))),
		"--default-limit", strconv.Itoa(int(relayDefaultBudget(relay))),
		// Relays sharing one Redis, or api_users of one name in two
		// namespaces, must not share a budget.
		"--scope", relay.Namespace + "/" + relay.Name,
	}
	if rl.Deadline != nil {
		args = append(args, "--deadline", rl.Deadline.Duration.String())
	}
	if rl.Redis.Username != "" {
		args = append(args, "--redis-username", rl.Redis.Username)
	}
	if rl.Redis.PasswordSecretRef != nil {
		args = append(args, "--redis-password-file", ratelimitPasswordFile)
	}
	if tls := rl.Redis.TLS; tls != nil {
		args = append(args, "--redis-tls")
		if tls.CASecretRef != nil {
			args = append(args, "--redis-ca-file", ratelimitCAFile)
		}
	}
	return args
}

func ratelimitFailureMode(rl *v1.RelayRateLimit) v1.RateLimitFailureMode {
	if rl.FailureMode == "" {
		return v1.RateLimitFailureAllow
	}
	return rl.FailureMode
}

func relayDefaultBudget(relay *v1.SmtpRelay) int32 {
	if relay.Spec.DefaultBudgetPerMinute > 0 {
		return relay.Spec.DefaultBudgetPerMinute
	}
	return wire.DefaultBudgetPerMinute
}

// ratelimitMounts are the sidecar's Secrets: the Redis password and CA.
func ratelimitMounts(relay *v1.SmtpRelay) []secretMount {
	rl := relay.Spec.RateLimit
	if rl == nil {
		return nil
	}
	var m []secretMount
	if ref := rl.Redis.PasswordSecretRef; ref != nil {
		m = append(m, secretMount{"spec.rateLimit.redis.passwordSecretRef", "redis-password", dirOf(ratelimitPasswordFile), ref.Name, keyItem(ref.Key, "password")})
	}
	if rl.Redis.TLS != nil && rl.Redis.TLS.CASecretRef != nil {
		ref := rl.Redis.TLS.CASecretRef
		m = append(m, secretMount{"spec.rateLimit.redis.tls.caSecretRef", "redis-ca", dirOf(ratelimitCAFile), ref.Name, keyItem(ref.Key, "ca.crt")})
	}
	return m
}

// SecretRef is a Secret the relay's pods mount, with the field that names it.
type SecretRef struct {
	Field, Name string
}

// ReferencedSecrets are the Secrets besides the TLS one that the pods
// cannot start without: those the relay and the sidecar mount.
func ReferencedSecrets(relay *v1.SmtpRelay) []SecretRef {
	var refs []SecretRef
	for _, m := range append(relayQueueMounts(relay), ratelimitMounts(relay)...) {
		refs = append(refs, SecretRef{Field: m.field, Name: m.secret})
	}
	return refs
}
