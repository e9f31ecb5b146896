package render

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/config"
)

// Label values and annotations only the relay's objects carry.
const (
	// relayAppName is LabelAppName's value on every relay object.
	relayAppName = "mailfleet-relay"
	// AnnotationConfigHash on the pod template carries a digest of relay.yaml,
	// so a config change rolls the pods: the relay reads its file once.
	AnnotationConfigHash = "mailfleet.io/config-hash"
	// AnnotationSecretsDigest on the pod template digests the versions of
	// the Secrets the pods read at start, so rotating one rolls the pods.
	AnnotationSecretsDigest = "mailfleet.io/secrets-digest"
)

// Paths, ports and sizes inside the relay pod.
const (
	relayContainerName   = "relay"
	ConfigKey            = "relay.yaml"
	relayReplicasKey     = "replicas"
	relayConfigPath      = "/etc/mailfleet/relay.yaml"
	relayTLSDir          = "/etc/mailfleet/tls"
	relayMetricsPortName = "metrics"
	relayMetricsPort     = 9090
	// relayUID is the conventional "nonroot" user of distroless images.
	relayUID = 65532

	// privilegedPortOffset moves a declared port below 1024 to an
	// unprivileged container port (25 -> 10025, 465 -> 10465, 587 -> 10587)
	// while the Service keeps the declared port. A non-root process cannot
	// bind below 1024, and adding NET_BIND_SERVICE (the one capability
	// PodSecurity "restricted" allows) does not help by itself: the kernel
	// clears a non-root process's capabilities at exec unless they are
	// ambient, which Kubernetes does not set, and file capabilities on the
	// binary are ignored under allowPrivilegeEscalation=false (no_new_privs).
	// The net.ipv4.ip_unprivileged_port_start sysctl would work but depends
	// on the kubelet allowing it. Remapping works on every runtime and kernel
	// and needs no capability at all.
	privilegedPortOffset = 10000

	// relayDrainGrace is how long the relay lets open sessions finish after
	// SIGTERM unless spec.drainGracePeriod says otherwise; relayPreStopSleep
	// lets endpoints and kube-proxy stop sending new connections first. The
	// pod's termination grace period covers both and relayExitMargin more,
	// so the kubelet never kills a draining relay.
	relayDrainGrace        = 30 * time.Second
	relayPreStopSleep      = 5 * time.Second
	relayExitMargin        = 10 * time.Second
	defaultRelayReplicas   = int32(2)
	defaultRelayBanner     = "mailfleet"
	CertManagerGroup       = "cert-manager.io"
	IssuerKind             = "Issuer"
	ClusterIssuerKind      = "ClusterIssuer"
	relayServiceAccountSfx = "-relay"
)

// Options are the operator's own settings that shape what a relay
// becomes.
type Options struct {
	// Image is the operator's image, used when spec.image is empty: one
	// binary serves both the operator and the relay.
	Image string
	// AllowedImages are the images an SmtpRelay may choose in spec.image
	// besides Image: exact references, or prefixes ending in "/", ":" or
	// "@" ("registry.example/mailfleet:" allows every tag). Only the
	// administrator who runs the operator picks what relay pods execute,
	// with the relay's ServiceAccount and the cluster's network.
	AllowedImages []string
	// AllowedClusterIssuers, when not nil, are the ClusterIssuers an
	// SmtpRelay may name: a ClusterIssuer signs for the whole cluster, and
	// whoever may write an SmtpRelay in one namespace should not obtain a
	// certificate for any name through it. Issuers in the relay's own
	// namespace are always allowed.
	AllowedClusterIssuers []string
	// AllowedHostnames, when not nil, are the names a relay may ask a
	// certificate for: "mail.example.com", or "*.example.com" for any name
	// under example.com.
	AllowedHostnames []string
}

// ErrCertificateNotAllowed marks an issuer or hostname outside the lists.
var ErrCertificateNotAllowed = errors.New("certificate not allowed")

// certificateAllowed says why the relay's certificate request is refused,
// or returns nil.
func (o Options) certificateAllowed(relay *v1.SmtpRelay) error {
	ref := relay.Spec.TLS.IssuerRef
	if ref == nil {
		return nil
	}
	if o.AllowedClusterIssuers != nil && IssuerRefKind(ref) == ClusterIssuerKind && !slices.Contains(o.AllowedClusterIssuers, ref.Name) {
		return fmt.Errorf("%w: ClusterIssuer %q is not among the ClusterIssuers the operator allows (--relay-allowed-cluster-issuers); use an Issuer in the relay's namespace, or ask the cluster administrator", ErrCertificateNotAllowed, ref.Name)
	}
	if o.AllowedHostnames != nil && !hostnameAllowed(o.AllowedHostnames, relay.Spec.Hostname) {
		return fmt.Errorf("%w: spec.hostname %q is not among the names the operator issues certificates for (--relay-allowed-hostnames)", ErrCertificateNotAllowed, relay.Spec.Hostname)
	}
	return nil
}

func hostnameAllowed(patterns []string, host string) bool {
	host = strings.ToLower(host)
	for _, p := range patterns {
		p = strings.ToLower(p)
		if suffix, wild := strings.CutPrefix(p, "*."); wild && strings.HasSuffix(host, "."+suffix) || host == p {
			return true
		}
	}
	return false
}

// ErrImageNotAllowed marks a spec.image outside Options.AllowedImages.
var ErrImageNotAllowed = errors.New("image not allowed")

// imageAllowed reports whether an SmtpRelay may run image.
func (o Options) imageAllowed(image string) bool {
	if image == o.Image {
		return true
	}
	for _, a := range o.AllowedImages {
		if image == a || (a != "" && strings.ContainsAny(a[len(a)-1:], "/:@") && strings.HasPrefix(image, a)) {
			return true
		}
	}
	return false
}

// Object is what every rendered object is: controller-runtime's
// client.Object, spelled here so that rendering needs no client.
type Object interface {
	metav1.Object
	runtime.Object
}

// RelayObjects is everything an SmtpRelay becomes. Certificate is nil when
// the relay uses an existing Secret instead of cert-manager.
type RelayObjects struct {
	ConfigMap *corev1.ConfigMap
	// WebhookStatus is where the relay's pods report the webhooks their
	// endpoints disabled; rendered without data, which is theirs.
	WebhookStatus  *corev1.ConfigMap
	ServiceAccount *corev1.ServiceAccount
	Role           *rbacv1.Role
	RoleBinding    *rbacv1.RoleBinding
	Certificate    *certmanagerv1.Certificate
	Deployment     *appsv1.Deployment
	Service        *corev1.Service
	PDB            *policyv1.PodDisruptionBudget
}

// List returns the objects in the order they are applied: what the pods
// mount and run as comes before the Deployment that needs it.
func (o *RelayObjects) List() []Object {
	objs := []Object{o.ConfigMap, o.WebhookStatus, o.ServiceAccount, o.Role, o.RoleBinding}
	if o.Certificate != nil {
		objs = append(objs, o.Certificate)
	}
	return append(objs, o.Deployment, o.Service, o.PDB)
}

// relayPort is a listener with the port the container binds for it.
type relayPort struct {
	v1.RelayListener
	ContainerPort int32
}

// Relay builds every object an SmtpRelay needs. It reads nothing but
// its arguments; an error means the spec cannot be turned into valid
// objects and says which part to fix.
func Relay(relay *v1.SmtpRelay, opts Options) (*RelayObjects, error) {
	if errs := validation.IsDNS1035Label(relay.Name); len(errs) > 0 {
		// The Service carries the relay's name, and a Service name is a DNS label.
		return nil, fmt.Errorf("relay name %q cannot name a Service: %s", relay.Name, strings.Join(errs, "; "))
	}
	image := relay.Spec.Image
	if image == "" {
		image = opts.Image
	}
	if !opts.imageAllowed(image) {
		return nil, fmt.Errorf("%w: spec.image %q is not among the images the operator allows (--relay-allowed-images); remove spec.image to run the operator's own, or ask the cluster administrator to allow it", ErrImageNotAllowed, image)
	}
	if image == "" {
		return nil, errors.New("spec.image is empty and the operator has no default image")
	}
	if err := opts.certificateAllowed(relay); err != nil {
		return nil, err
	}
	ports, err := relayPorts(relayListeners(relay))
	if err != nil {
		return nil, err
	}
	cm, configHash, err := relayConfigMap(relay, ports)
	if err != nil {
		return nil, err
	}
	return &RelayObjects{
		ConfigMap:      cm,
		WebhookStatus:  &corev1.ConfigMap{ObjectMeta: relayObjectMeta(relay, wire.WebhookStatusConfigMapName(relay.Name))},
		ServiceAccount: relayServiceAccount(relay),
		Role:           relayRole(relay),
		RoleBinding:    relayRoleBinding(relay),
		Certificate:    relayCertificate(relay),
		Deployment:     relayDeployment(relay, image, ports, configHash),
		Service:        relayService(relay, ports),
		PDB:            relayPDB(relay),
	}, nil
}

// relayLabels are on every object of a relay.
func relayLabels(relay *v1.SmtpRelay) map[string]string {
	l := Selector(relay)
	l[LabelManagedBy] = ManagedByValue
	return l
}

// Selector picks a relay's pods. It leaves out managed-by so that a
// selector, which is immutable, never depends on who manages the pods.
func Selector(relay *v1.SmtpRelay) map[string]string {
	return map[string]string{
		LabelAppName:     relayAppName,
		LabelAppInstance: relay.Name,
		LabelRelay:       relay.Name,
	}
}

func relayObjectMeta(relay *v1.SmtpRelay, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: relay.Namespace, Labels: relayLabels(relay)}
}

func ConfigMapName(relay string) string      { return relay + "-config" }
func ServiceAccountName(relay string) string { return relay + relayServiceAccountSfx }

// relayTLSSecretName is the Secret the relay mounts: the user's, or the one
// cert-manager writes for the relay's Certificate.
func relayTLSSecretName(relay *v1.SmtpRelay) string {
	if relay.Spec.TLS.SecretName != "" {
		return relay.Spec.TLS.SecretName
	}
	return relay.Name + "-tls"
}

// Endpoint is the in-cluster name of the relay Service.
func Endpoint(relay *v1.SmtpRelay) string {
	return relay.Name + "." + relay.Namespace + ".svc"
}

// relayDrain is how long a stopping relay lets open sessions finish.
func relayDrain(relay *v1.SmtpRelay) time.Duration {
	if d := relay.Spec.DrainGracePeriod; d != nil && d.Duration > 0 {
		return d.Duration
	}
	return relayDrainGrace
}

// relayTerminationGraceSeconds covers the preStop sleep, the drain and the
// margin for the last replies and the queue's close, rounded up.
func relayTerminationGraceSeconds(relay *v1.SmtpRelay) int64 {
	total := relayPreStopSleep + relayDrain(relay) + relayExitMargin
	return int64((total + time.Second - 1) / time.Second)
}

// Requests given to a relay and its sidecar that declare none. Idle on the
// e2e cluster each uses under 10 MiB (its pod-spec scenario prints it); the
// requests leave room for a busy pod without reserving a node.
var (
	relayDefaultRequests = corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("100m"),
		corev1.ResourceMemory: resource.MustParse("128Mi"),
	}
	ratelimitDefaultRequests = corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("50m"),
		corev1.ResourceMemory: resource.MustParse("64Mi"),
	}
)

// withDefaultRequests fills each request in defaults that r neither
// requests nor limits (Kubernetes makes a limit without a request the
// request, and a default below a user's limit must not override that).
func withDefaultRequests(r corev1.ResourceRequirements, defaults corev1.ResourceList) corev1.ResourceRequirements {
	out := *r.DeepCopy()
	for name, q := range defaults {
		_, requested := out.Requests[name]
		_, limited := out.Limits[name]
		if requested || limited {
			continue
		}
		if out.Requests == nil {
			out.Requests = corev1.ResourceList{}
		}
		out.Requests[name] = q
	}
	return out
}

func Replicas(relay *v1.SmtpRelay) int32 {
	return ptr.Deref(relay.Spec.Replicas, defaultRelayReplicas)
}

// defaultRelayListeners mirror config.DefaultListeners in API terms, and
// add the HTTP send API (a test keeps them in step).
func defaultRelayListeners() []v1.RelayListener {
	return []v1.RelayListener{
		{Name: "smtp", Port: 25, TLS: v1.ListenerStartTLS},
		{Name: "submission", Port: 587, TLS: v1.ListenerStartTLS},
		{Name: "alt", Port: 2525, TLS: v1.ListenerStartTLS},
		{Name: "smtps", Port: 465, TLS: v1.ListenerImplicit},
		{Name: "api", Port: defaultAPIPort, Kind: v1.ListenerHTTP},
	}
}

// defaultAPIPort is the HTTP send API's port, in the pod and on the
// Service (config.DefaultHTTPAPIAddress).
const defaultAPIPort = 8443

func relayListeners(relay *v1.SmtpRelay) []v1.RelayListener {
	if len(relay.Spec.Listeners) == 0 {
		return defaultRelayListeners()
	}
	return relay.Spec.Listeners
}

// containerPortFor is where the relay binds a declared port (see
// privilegedPortOffset).
func containerPortFor(port int32) int32 {
	if port < 1024 {
		return port + privilegedPortOffset
	}
	return port
}

// relayPorts maps listeners to container ports and refuses what the API's
// validation cannot see: port names Kubernetes rejects on a container, and
// two listeners (or a listener and the metrics port) landing on one
// container port after the remapping.
func relayPorts(listeners []v1.RelayListener) ([]relayPort, error) {
	used := map[int32]string{relayMetricsPort: relayMetricsPortName}
	names := map[string]bool{relayMetricsPortName: true}
	out := make([]relayPort, 0, len(listeners))
	for _, l := range listeners {
		if errs := validation.IsValidPortName(l.Name); len(errs) > 0 {
			return nil, fmt.Errorf("listener %q: not a valid port name: %s", l.Name, strings.Join(errs, "; "))
		}
		if names[l.Name] {
			return nil, fmt.Errorf("listener %q: the name is used twice or is the metrics port's (%q)", l.Name, relayMetricsPortName)
		}
		cp := containerPortFor(l.Port)
		if other, ok := used[cp]; ok {
			return nil, fmt.Errorf("listener %q (port %d) and %q would both listen on container port %d; ports below 1024 listen on port+%d",
				l.Name, l.Port, other, cp, privilegedPortOffset)
		}
		used[cp], names[l.Name] = l.Name, true
		out = append(out, relayPort{RelayListener: l, ContainerPort: cp})
	}
	return out, nil
}

// proxyOf is a listener's PROXY protocol setting, as the relay reads it.
func proxyOf(l v1.RelayListener) config.Proxy {
	return config.Proxy{ProxyProtocol: l.ProxyProtocol, TrustedProxies: slices.Clone(l.TrustedProxies)}
}

// relayConfig is the relay's own configuration, as `mailfleet relay
// --config` reads it.
func relayConfig(relay *v1.SmtpRelay, ports []relayPort) config.Config {
	banner := relay.Spec.Banner
	if banner == "" {
		banner = defaultRelayBanner
	}
	c := config.Config{
		Hostname: relay.Spec.Hostname,
		Banner:   banner,
		// Node stays empty: the relay then uses its host name, which in a
		// pod is the pod name, unique in the fleet as queue ids need.
		TLS: &config.TLS{
			CertFile: relayTLSDir + "/" + corev1.TLSCertKey,
			KeyFile:  relayTLSDir + "/" + corev1.TLSPrivateKeyKey,
		},
		// The relay watches the shards CredentialsPublisher writes, in its
		// own namespace (the Role below allows exactly that).
		CredentialsSecrets: &config.CredentialsSecrets{Namespace: relay.Namespace, Relay: relay.Name},
		// Accepted mail lives in the shared JetStream, never in the pod.
		Queue:            relayQueueConfig(relay),
		Delivery:         relayDeliveryConfig(relay),
		MetricsAddress:   ":" + strconv.Itoa(relayMetricsPort),
		DrainGracePeriod: config.Duration{Duration: relayDrain(relay)},
		Budget:           relayBudget(relay),
		Suppression:      relaySuppression(relay),
	}
	for _, p := range ports {
		if p.IsHTTP() {
			// At most one: the CRD's validation says so.
			c.HTTPAPI = &config.HTTPAPI{Enabled: true, Address: ":" + strconv.Itoa(int(p.ContainerPort)), Proxy: proxyOf(p.RelayListener)}
			continue
		}
		c.Listeners = append(c.Listeners, config.Listener{
			Name:            p.Name,
			Address:         ":" + strconv.Itoa(int(p.ContainerPort)),
			ImplicitTLS:     p.TLS == v1.ListenerImplicit,
			AuthRequiresTLS: ptr.To(ptr.Deref(p.AuthRequiresTLS, true)),
			Proxy:           proxyOf(p.RelayListener),
		})
	}
	return c
}

// relayConfigMap holds the relay's config file and the fleet's size, and
// returns the digest that rolls the pods when the config changes. The
// fleet's size only sets each pod's share of a budget (without the sidecar
// in relay.yaml, with it the sidecar's fallback), so it is left out of the
// digest: scaling must not restart every relay. A pod reads the size when
// it starts, so pods older than a scale keep their old share until they are
// replaced; spec.rateLimit is the exact count.
func relayConfigMap(relay *v1.SmtpRelay, ports []relayPort) (*corev1.ConfigMap, string, error) {
	c := relayConfig(relay, ports)
	data, err := yaml.Marshal(c)
	if err != nil {
		return nil, "", fmt.Errorf("marshal relay config: %w", err)
	}
	c.Budget.PodShare = 0
	stable, err := yaml.Marshal(c)
	if err != nil {
		return nil, "", fmt.Errorf("marshal relay config: %w", err)
	}
	sum := sha256.Sum256(stable)
	return &corev1.ConfigMap{
		ObjectMeta: relayObjectMeta(relay, ConfigMapName(relay.Name)),
		Data: map[string]string{
			ConfigKey:        string(data),
			relayReplicasKey: strconv.Itoa(relayBudgetShares(relay)),
		},
	}, hex.EncodeToString(sum[:]), nil
}

func relayDeployment(relay *v1.SmtpRelay, image string, ports []relayPort, hash string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: relayObjectMeta(relay, relay.Name),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(Replicas(relay)),
			Selector: &metav1.LabelSelector{MatchLabels: Selector(relay)},
			// Surge rather than take a relay away: a rollout never lowers
			// the number of pods accepting mail.
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxUnavailable: ptr.To(intstr.FromInt32(0)),
					MaxSurge:       ptr.To(intstr.FromInt32(1)),
				},
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      relayLabels(relay),
					Annotations: map[string]string{AnnotationConfigHash: hash},
				},
				Spec: relayPodSpec(relay, image, ports),
			},
		},
	}
}

func relayPodSpec(relay *v1.SmtpRelay, image string, ports []relayPort) corev1.PodSpec {
	return corev1.PodSpec{
		ServiceAccountName: ServiceAccountName(relay.Name),
		// The relay will read its credentials shards from the API server.
		AutomountServiceAccountToken:  ptr.To(true),
		TerminationGracePeriodSeconds: ptr.To(relayTerminationGraceSeconds(relay)),
		SecurityContext: &corev1.PodSecurityContext{
			RunAsNonRoot: ptr.To(true),
			RunAsUser:    ptr.To(int64(relayUID)),
			RunAsGroup:   ptr.To(int64(relayUID)),
			// The TLS key is mounted 0440 with this group, so only the relay reads it.
			FSGroup:        ptr.To(int64(relayUID)),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		InitContainers:            ratelimitInitContainers(relay, image),
		Containers:                []corev1.Container{relayContainer(relay, image, ports)},
		Volumes:                   relayVolumes(relay),
		TopologySpreadConstraints: relaySpread(relay),
	}
}

// relaySpread prefers pods on different nodes and zones, without ever
// leaving a pod pending for it.
func relaySpread(relay *v1.SmtpRelay) []corev1.TopologySpreadConstraint {
	var out []corev1.TopologySpreadConstraint
	for _, key := range []string{corev1.LabelHostname, corev1.LabelTopologyZone} {
		out = append(out, corev1.TopologySpreadConstraint{
			MaxSkew:           1,
			TopologyKey:       key,
			WhenUnsatisfiable: corev1.ScheduleAnyway,
			LabelSelector:     &metav1.LabelSelector{MatchLabels: Selector(relay)},
		})
	}
	return out
}

func relayContainer(relay *v1.SmtpRelay, image string, ports []relayPort) corev1.Container {
	cports := make([]corev1.ContainerPort, 0, len(ports)+1)
	for _, p := range ports {
		cports = append(cports, corev1.ContainerPort{Name: p.Name, ContainerPort: p.ContainerPort, Protocol: corev1.ProtocolTCP})
	}
	cports = append(cports, corev1.ContainerPort{Name: relayMetricsPortName, ContainerPort: relayMetricsPort, Protocol: corev1.ProtocolTCP})
	return corev1.Container{
		Name:  relayContainerName,
		Image: image,
		// The image's entrypoint is the mailfleet binary.
		Args:  []string{"relay", "--config", relayConfigPath},
		Ports: cports,
		Env: []corev1.EnvVar{
			envFromField("POD_NAME", "metadata.name"),
			envFromField("POD_NAMESPACE", "metadata.namespace"),
		},
		Resources:       withDefaultRequests(relay.Spec.Resources, relayDefaultRequests),
		ReadinessProbe:  relayProbe("/readyz", 5, 2),
		LivenessProbe:   relayProbe("/healthz", 10, 3),
		Lifecycle:       &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: int64(relayPreStopSleep / time.Second)}}},
		SecurityContext: relayContainerSecurity(),
		VolumeMounts: append([]corev1.VolumeMount{
			// subPath freezes the file, which is fine: the relay reads it
			// once, and a change rolls the pods through the config hash.
			{Name: "config", MountPath: relayConfigPath, SubPath: ConfigKey, ReadOnly: true},
			// No subPath here, so renewed certificates reach the relay,
			// which reloads them without dropping sessions.
			{Name: "tls", MountPath: relayTLSDir, ReadOnly: true},
		}, relaySecretVolumeMounts(relay)...),
	}
}

func relaySecretVolumeMounts(relay *v1.SmtpRelay) []corev1.VolumeMount {
	var out []corev1.VolumeMount
	for _, m := range relayQueueMounts(relay) {
		out = append(out, m.volumeMount())
	}
	return out
}

// relayContainerSecurity meets PodSecurity "restricted" with nothing to
// spare: no capabilities at all (see privilegedPortOffset).
func relayContainerSecurity() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		RunAsNonRoot:             ptr.To(true),
		RunAsUser:                ptr.To(int64(relayUID)),
		ReadOnlyRootFilesystem:   ptr.To(true),
		AllowPrivilegeEscalation: ptr.To(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

func envFromField(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

func relayProbe(path string, period, failures int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{
			HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString(relayMetricsPortName)},
		},
		PeriodSeconds:    period,
		FailureThreshold: failures,
	}
}

func relayVolumes(relay *v1.SmtpRelay) []corev1.Volume {
	return append([]corev1.Volume{
		{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: ConfigMapName(relay.Name)},
		}}},
		{Name: "tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName:  relayTLSSecretName(relay),
			DefaultMode: ptr.To(int32(0o440)),
		}}},
	}, relaySecretVolumes(relay)...)
}

// relaySecretVolumes are the Secrets the relay and the sidecar mount.
func relaySecretVolumes(relay *v1.SmtpRelay) []corev1.Volume {
	var out []corev1.Volume
	for _, m := range append(relayQueueMounts(relay), ratelimitMounts(relay)...) {
		out = append(out, m.podVolume())
	}
	return out
}

func relayService(relay *v1.SmtpRelay, ports []relayPort) *corev1.Service {
	sports := make([]corev1.ServicePort, 0, len(ports))
	for _, p := range ports {
		sports = append(sports, corev1.ServicePort{
			Name:       p.Name,
			Port:       p.Port,
			TargetPort: intstr.FromInt32(p.ContainerPort),
			Protocol:   corev1.ProtocolTCP,
		})
	}
	spec := relay.Spec.Service
	svc := &corev1.Service{
		ObjectMeta: relayObjectMeta(relay, relay.Name),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: Selector(relay),
			Ports:    sports,
		},
	}
	if len(spec.Annotations) > 0 {
		svc.Annotations = maps.Clone(spec.Annotations)
	}
	if spec.Type == corev1.ServiceTypeClusterIP || spec.Type == "" {
		return svc
	}
	svc.Spec.Type = spec.Type
	// Local unless told otherwise: the relay's per-address limits and its
	// Received header need the client's own address, which Cluster replaces
	// with a node's.
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	if spec.ExternalTrafficPolicy != "" {
		svc.Spec.ExternalTrafficPolicy = spec.ExternalTrafficPolicy
	}
	if spec.Type == corev1.ServiceTypeLoadBalancer {
		svc.Spec.LoadBalancerClass = spec.LoadBalancerClass
		svc.Spec.LoadBalancerSourceRanges = slices.Clone(spec.LoadBalancerSourceRanges)
	}
	return svc
}

// relayCertificate asks cert-manager for the relay's certificate, or is nil
// when the relay brings its own Secret.
func relayCertificate(relay *v1.SmtpRelay) *certmanagerv1.Certificate {
	ref := relay.Spec.TLS.IssuerRef
	if ref == nil {
		return nil
	}
	return &certmanagerv1.Certificate{
		ObjectMeta: relayObjectMeta(relay, relay.Name),
		Spec: certmanagerv1.CertificateSpec{
			SecretName: relayTLSSecretName(relay),
			// Not app.kubernetes.io/instance: Argo CD would take the Secret,
			// which is not in its manifests, for its own and prune it.
			SecretTemplate: &certmanagerv1.CertificateSecretTemplate{Labels: map[string]string{
				LabelManagedBy: ManagedByValue,
				LabelRelay:     relay.Name,
			}},
			DNSNames:  []string{relay.Spec.Hostname},
			IssuerRef: cmmeta.IssuerReference{Name: ref.Name, Kind: IssuerRefKind(ref), Group: IssuerRefGroup(ref)},
			// A fresh key with every renewal limits what a leaked key exposes.
			PrivateKey: &certmanagerv1.CertificatePrivateKey{RotationPolicy: certmanagerv1.RotationPolicyAlways},
			Usages:     []certmanagerv1.KeyUsage{certmanagerv1.UsageServerAuth},
		},
	}
}

// IssuerRefKind and IssuerRefGroup apply the API's defaults, which an
// object that never went through the API server lacks.
func IssuerRefKind(ref *v1.IssuerReference) string {
	if ref.Kind == "" {
		return IssuerKind
	}
	return ref.Kind
}

func IssuerRefGroup(ref *v1.IssuerReference) string {
	if ref.Group == "" {
		return CertManagerGroup
	}
	return ref.Group
}

func relayServiceAccount(relay *v1.SmtpRelay) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: relayObjectMeta(relay, ServiceAccountName(relay.Name))}
}

// relayRole is all the relay may do: list and watch its own credentials
// shards, each by name, in its own namespace, and patch its webhook status
// ConfigMap, by name. A Role, never a ClusterRole,
// and resourceNames, never all Secrets: a relay's token reads no tenant's
// Secret and no other relay's shards. The shard names are fixed
// (wire.ShardSecretNames), and the relay watches each with a
// metadata.name field selector, the form of list and watch RBAC
// authorises by name. The rate-limit sidecar reads the same shards.
func relayRole(relay *v1.SmtpRelay) *rbacv1.Role {
	return &rbacv1.Role{
		ObjectMeta: relayObjectMeta(relay, ServiceAccountName(relay.Name)),
		Rules: []rbacv1.PolicyRule{{
			APIGroups:     []string{""},
			Resources:     []string{"secrets"},
			ResourceNames: wire.ShardSecretNames(relay.Name),
			Verbs:         []string{"list", "watch"},
		}, {
			// The one object a relay writes: its report of the webhooks
			// their endpoints disabled (kubesource.StatusConfigMap).
			APIGroups:     []string{""},
			Resources:     []string{"configmaps"},
			ResourceNames: []string{wire.WebhookStatusConfigMapName(relay.Name)},
			Verbs:         []string{"patch"},
		}},
	}
}

func relayRoleBinding(relay *v1.SmtpRelay) *rbacv1.RoleBinding {
	name := ServiceAccountName(relay.Name)
	return &rbacv1.RoleBinding{
		ObjectMeta: relayObjectMeta(relay, name),
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: relay.Namespace}},
	}
}

// relayPDB lets voluntary disruptions (drains, upgrades) take one relay pod
// at a time. It is rendered at every replica count: with one replica,
// maxUnavailable 1 still lets a drain evict the pod (a minAvailable 1 PDB
// would block it for ever), and keeping the object avoids deleting and
// recreating it as the fleet scales through one. Unready pods may always be
// evicted, so a crash-looping relay never blocks a node drain.
func relayPDB(relay *v1.SmtpRelay) *policyv1.PodDisruptionBudget {
	return &policyv1.PodDisruptionBudget{
		ObjectMeta: relayObjectMeta(relay, relay.Name),
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable:             ptr.To(intstr.FromInt32(1)),
			Selector:                   &metav1.LabelSelector{MatchLabels: Selector(relay)},
			UnhealthyPodEvictionPolicy: ptr.To(policyv1.AlwaysAllow),
		},
	}
}

// relaySuppression is the relay's suppression settings; the relay's own
// defaults when the spec sets none.
func relaySuppression(relay *v1.SmtpRelay) config.Suppression {
	s := relay.Spec.Suppression
	if s == nil {
		return config.Suppression{}
	}
	out := config.Suppression{OnSubmission: s.OnSubmission}
	if s.BounceTTL != nil {
		out.BounceTTL = config.Duration{Duration: s.BounceTTL.Duration}
	}
	return out
}
