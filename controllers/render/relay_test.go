package render

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/v1alpha1/v1alpha1test"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/config"
)

const testImage = "registry.example.com/mailfleet:test"

var testRenderOptions = Options{Image: testImage}

func mustRender(t *testing.T, r *v1.SmtpRelay) *RelayObjects {
	t.Helper()
	objs, err := Relay(r, testRenderOptions)
	if err != nil {
		t.Fatalf("Relay: %v", err)
	}
	return objs
}

func TestRenderRelayNamesAndLabels(t *testing.T) {
	objs := mustRender(t, v1alpha1test.Relay("mail", "mx"))
	want := map[string]string{
		"ConfigMap":           "mx-config",
		"WebhookStatus":       "mx-webhook-status",
		"ServiceAccount":      "mx-relay",
		"Role":                "mx-relay",
		"RoleBinding":         "mx-relay",
		"Certificate":         "mx",
		"Deployment":          "mx",
		"Service":             "mx",
		"PodDisruptionBudget": "mx",
	}
	wantLabels := map[string]string{
		LabelAppName:     "mailfleet-relay",
		LabelAppInstance: "mx",
		LabelManagedBy:   "mailfleet-operator",
		LabelRelay:       "mx",
	}
	got := map[string]string{}
	for _, o := range objs.List() {
		kind := reflect.TypeOf(o).Elem().Name()
		if o.GetName() == "mx-webhook-status" {
			kind = "WebhookStatus"
		}
		got[kind] = o.GetName()
		if o.GetNamespace() != "mail" {
			t.Errorf("%s namespace = %q, want mail", kind, o.GetNamespace())
		}
		if !reflect.DeepEqual(o.GetLabels(), wantLabels) {
			t.Errorf("%s labels = %v, want %v", kind, o.GetLabels(), wantLabels)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("objects = %v, want %v", got, want)
	}
}

func TestRenderRelayDeployment(t *testing.T) {
	d := mustRender(t, v1alpha1test.Relay("mail", "mx", v1alpha1test.WithCPURequest("250m"))).Deployment
	if got := *d.Spec.Replicas; got != 2 {
		t.Errorf("replicas = %d, want the API default 2", got)
	}
	wantSelector := map[string]string{LabelAppName: "mailfleet-relay", LabelAppInstance: "mx", LabelRelay: "mx"}
	if !reflect.DeepEqual(d.Spec.Selector.MatchLabels, wantSelector) {
		t.Errorf("selector = %v, want %v", d.Spec.Selector.MatchLabels, wantSelector)
	}
	pod := d.Spec.Template
	for k, v := range wantSelector {
		if pod.Labels[k] != v {
			t.Errorf("pod label %s = %q, want %q", k, pod.Labels[k], v)
		}
	}
	if len(pod.Annotations[AnnotationConfigHash]) != 64 {
		t.Errorf("config hash annotation = %q, want a sha256", pod.Annotations[AnnotationConfigHash])
	}
	spec := pod.Spec
	if spec.ServiceAccountName != "mx-relay" || !ptr.Deref(spec.AutomountServiceAccountToken, false) {
		t.Errorf("service account = %q automount %v, want mx-relay and true", spec.ServiceAccountName, spec.AutomountServiceAccountToken)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("containers = %d, want 1 (the relay)", len(spec.Containers))
	}
	c := spec.Containers[0]
	if c.Name != "relay" || c.Image != testImage {
		t.Errorf("container %q image %q", c.Name, c.Image)
	}
	if want := []string{"relay", "--config", "/etc/mailfleet/relay.yaml"}; !reflect.DeepEqual(c.Args, want) {
		t.Errorf("args = %v, want %v", c.Args, want)
	}
	if got := c.Resources.Requests.Cpu().String(); got != "250m" {
		t.Errorf("cpu request = %s, want the spec's 250m", got)
	}
	for _, p := range []struct {
		probe *corev1.Probe
		path  string
	}{{c.ReadinessProbe, "/readyz"}, {c.LivenessProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port != intstr.FromString("metrics") {
			t.Errorf("probe %s = %+v, want HTTP GET on the metrics port", p.path, p.probe)
		}
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	// Nothing writable: accepted mail lives in the shared JetStream.
	wantMounts := map[string]string{"config": "/etc/mailfleet/relay.yaml", "tls": "/etc/mailfleet/tls"}
	if !reflect.DeepEqual(mounts, wantMounts) {
		t.Errorf("mounts = %v, want %v", mounts, wantMounts)
	}
	vols := map[string]corev1.VolumeSource{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v.VolumeSource
	}
	if cm := vols["config"].ConfigMap; cm == nil || cm.Name != "mx-config" {
		t.Errorf("config volume = %+v, want ConfigMap mx-config", vols["config"])
	}
	if s := vols["tls"].Secret; s == nil || s.SecretName != "mx-tls" {
		t.Errorf("tls volume = %+v, want Secret mx-tls", vols["tls"])
	}
}

func TestRenderRelayImage(t *testing.T) {
	tests := []struct {
		name  string
		relay *v1.SmtpRelay
		want  string
	}{
		{"operator's image by default", v1alpha1test.Relay("mail", "mx"), testImage},
		{"spec.image naming the operator's image", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithImage(testImage)), testImage},
		{"an allowed image", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithImage("example.com/relay:v2")), "example.com/relay:v2"},
		{"a tag under an allowed prefix", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithImage("registry.example/mailfleet:1.2.3")), "registry.example/mailfleet:1.2.3"},
	}
	opts := testRenderOptions
	opts.AllowedImages = []string{"example.com/relay:v2", "registry.example/mailfleet:"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := Relay(tt.relay, opts)
			if err != nil {
				t.Fatal(err)
			}
			if got := objs.Deployment.Spec.Template.Spec.Containers[0].Image; got != tt.want {
				t.Errorf("image = %q, want %q", got, tt.want)
			}
		})
	}
}

// portView is a listener as the Service, the container and relay.yaml see it.
type portView struct {
	name                               string
	servicePort, target, containerPort int32
	configAddress                      string
	implicitTLS, authTLS               bool
	http                               bool // relay.yaml's httpAPI
}

func TestRenderRelayListeners(t *testing.T) {
	tests := []struct {
		name  string
		relay *v1.SmtpRelay
		want  []portView
	}{{
		name:  "defaults: privileged ports move up by 10000, 2525 stays",
		relay: v1alpha1test.Relay("mail", "mx"),
		want: []portView{
			{name: "smtp", servicePort: 25, target: 10025, containerPort: 10025, configAddress: ":10025", authTLS: true},
			{name: "submission", servicePort: 587, target: 10587, containerPort: 10587, configAddress: ":10587", authTLS: true},
			{name: "alt", servicePort: 2525, target: 2525, containerPort: 2525, configAddress: ":2525", authTLS: true},
			{name: "smtps", servicePort: 465, target: 10465, containerPort: 10465, configAddress: ":10465", implicitTLS: true, authTLS: true},
			{name: "api", servicePort: 8443, target: 8443, containerPort: 8443, configAddress: ":8443", http: true},
		},
	}, {
		name: "custom",
		relay: v1alpha1test.Relay("mail", "mx", v1alpha1test.WithListeners(
			v1.RelayListener{Name: "submission", Port: 587, TLS: v1.ListenerStartTLS, AuthRequiresTLS: ptr.To(false)},
			v1.RelayListener{Name: "tls", Port: 4650, TLS: v1.ListenerImplicit},
		)),
		want: []portView{
			{name: "submission", servicePort: 587, target: 10587, containerPort: 10587, configAddress: ":10587"},
			{name: "tls", servicePort: 4650, target: 4650, containerPort: 4650, configAddress: ":4650", implicitTLS: true, authTLS: true},
		},
	}, {
		name: "the HTTP API on a privileged port",
		relay: v1alpha1test.Relay("mail", "mx", v1alpha1test.WithListeners(
			v1.RelayListener{Name: "submission", Port: 587, TLS: v1.ListenerStartTLS},
			v1.RelayListener{Name: "https", Port: 443, Kind: v1.ListenerHTTP},
		)),
		want: []portView{
			{name: "submission", servicePort: 587, target: 10587, containerPort: 10587, configAddress: ":10587", authTLS: true},
			{name: "https", servicePort: 443, target: 10443, containerPort: 10443, configAddress: ":10443", http: true},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := mustRender(t, tt.relay)
			if got := portViews(t, objs); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ports:\n got %+v\nwant %+v", got, tt.want)
			}
			if objs.Service.Spec.Type != corev1.ServiceTypeClusterIP {
				t.Errorf("service type = %s, want ClusterIP", objs.Service.Spec.Type)
			}
			if !reflect.DeepEqual(objs.Service.Spec.Selector, objs.Deployment.Spec.Selector.MatchLabels) {
				t.Errorf("service selector %v differs from the deployment's %v", objs.Service.Spec.Selector, objs.Deployment.Spec.Selector.MatchLabels)
			}
		})
	}
}

// portViews joins the Service ports, container ports and relay.yaml
// listeners by name; the metrics port is checked separately.
func portViews(t *testing.T, objs *RelayObjects) []portView {
	t.Helper()
	containerPorts := map[string]int32{}
	for _, p := range objs.Deployment.Spec.Template.Spec.Containers[0].Ports {
		containerPorts[p.Name] = p.ContainerPort
	}
	if containerPorts["metrics"] != 9090 {
		t.Errorf("metrics container port = %d, want 9090", containerPorts["metrics"])
	}
	cfg := loadRendered(t, objs.ConfigMap)
	listeners := map[string]config.Listener{}
	for _, l := range cfg.Listeners {
		listeners[l.Name] = l
	}
	var out []portView
	for _, sp := range objs.Service.Spec.Ports {
		v := portView{name: sp.Name, servicePort: sp.Port, target: sp.TargetPort.IntVal, containerPort: containerPorts[sp.Name]}
		if l, ok := listeners[sp.Name]; ok {
			v.configAddress, v.implicitTLS, v.authTLS = l.Address, l.ImplicitTLS, l.AuthNeedsTLS()
		} else if cfg.HTTPAPI.Serves() {
			v.configAddress, v.http = cfg.HTTPAPI.Address, true
		}
		out = append(out, v)
	}
	served := len(cfg.Listeners)
	if cfg.HTTPAPI.Serves() {
		served++
	}
	if served != len(out) {
		t.Errorf("relay.yaml serves %d listeners, the Service %d ports", served, len(out))
	}
	return out
}

// loadRendered writes the ConfigMap's relay.yaml to a file and loads it
// with the relay's own loader, so what the operator renders is what the
// relay accepts (strictly: unknown fields are errors there).
func loadRendered(t *testing.T, cm *corev1.ConfigMap) config.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "relay.yaml")
	if err := os.WriteFile(path, []byte(cm.Data["relay.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("the relay refuses the rendered config: %v\n%s", err, cm.Data["relay.yaml"])
	}
	return cfg
}

func TestRenderedConfigLoads(t *testing.T) {
	tests := []struct {
		name       string
		relay      *v1.SmtpRelay
		wantBanner string
	}{
		{"defaults", v1alpha1test.Relay("mail", "mx"), "mailfleet"},
		{"banner and existing secret", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithBanner("Example Mail"), v1alpha1test.WithSecretName("own-tls")), "Example Mail"},
		{"one implicit listener", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithListeners(v1.RelayListener{Name: "smtps", Port: 465, TLS: v1.ListenerImplicit})), "mailfleet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := loadRendered(t, mustRender(t, tt.relay).ConfigMap)
			want := map[string]any{
				"hostname":       "smtp.example.com",
				"banner":         tt.wantBanner,
				"certFile":       "/etc/mailfleet/tls/tls.crt",
				"keyFile":        "/etc/mailfleet/tls/tls.key",
				"credentials":    "mail/mx",
				"queue":          "nats://nats.mailfleet-system.svc:4222 MAILFLEET_MAIL_MX 3",
				"workers":        64,
				"metricsAddress": ":9090",
				"drain":          relayDrainGrace,
			}
			got := map[string]any{
				"hostname": cfg.Hostname, "banner": cfg.Banner,
				"certFile": cfg.TLS.CertFile, "keyFile": cfg.TLS.KeyFile,
				"credentials":    cfg.CredentialsSecrets.Namespace + "/" + cfg.CredentialsSecrets.Relay,
				"queue":          fmt.Sprintf("%s %s %d", cfg.Queue.NATS.URL, cfg.Queue.NATS.Stream, cfg.Queue.NATS.Replicas),
				"workers":        cfg.Delivery.Workers,
				"metricsAddress": cfg.MetricsAddress, "drain": cfg.DrainGracePeriod.Duration,
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("config:\n got %v\nwant %v", got, want)
			}
			if strings.Contains(mustRender(t, tt.relay).ConfigMap.Data["relay.yaml"], "node:") {
				t.Error("relay.yaml sets node; it should default to the pod's host name")
			}
		})
	}
}

// The API documents the relay's default listeners; they must stay those
// the relay itself uses without a config.
func TestDefaultListenersMatchRelay(t *testing.T) {
	var want []v1.RelayListener
	for _, l := range config.DefaultListeners() {
		_, port, err := net.SplitHostPort(l.Address)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(port)
		tls := v1.ListenerStartTLS
		if l.ImplicitTLS {
			tls = v1.ListenerImplicit
		}
		want = append(want, v1.RelayListener{Name: l.Name, Port: int32(n), TLS: tls, AuthRequiresTLS: l.AuthRequiresTLS})
		if l.AuthRequiresTLS != nil {
			t.Errorf("config.DefaultListeners sets authRequiresTLS on %s; its default is the API's default", l.Name)
		}
	}
	got := defaultRelayListeners()
	api := got[len(got)-1]
	if !api.IsHTTP() || ":"+strconv.Itoa(int(api.Port)) != config.DefaultHTTPAPIAddress {
		t.Errorf("the default listeners end with %+v, want the HTTP API on %s", api, config.DefaultHTTPAPIAddress)
	}
	if got = got[:len(got)-1]; !reflect.DeepEqual(got, want) {
		t.Errorf("defaultRelayListeners() = %+v\nrelay's config.DefaultListeners() = %+v", got, want)
	}
}

func TestRenderRelayTLS(t *testing.T) {
	tests := []struct {
		name       string
		relay      *v1.SmtpRelay
		wantSecret string
		wantIssuer *cmmeta.IssuerReference // nil: no Certificate
	}{
		{"issuer defaults kind and group", v1alpha1test.Relay("mail", "mx"), "mx-tls",
			&cmmeta.IssuerReference{Name: "ca", Kind: "Issuer", Group: "cert-manager.io"}},
		{"cluster issuer", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithIssuer("ClusterIssuer", "letsencrypt")), "mx-tls",
			&cmmeta.IssuerReference{Name: "letsencrypt", Kind: "ClusterIssuer", Group: "cert-manager.io"}},
		{"existing secret: no certificate", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithSecretName("own-tls")), "own-tls", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := mustRender(t, tt.relay)
			for _, v := range objs.Deployment.Spec.Template.Spec.Volumes {
				if v.Name == "tls" && v.Secret.SecretName != tt.wantSecret {
					t.Errorf("tls volume secret = %q, want %q", v.Secret.SecretName, tt.wantSecret)
				}
			}
			if tt.wantIssuer == nil {
				if objs.Certificate != nil {
					t.Errorf("Certificate rendered for a relay with its own Secret")
				}
				return
			}
			checkCertificate(t, objs.Certificate, *tt.wantIssuer)
		})
	}
}

func checkCertificate(t *testing.T, c *certmanagerv1.Certificate, issuer cmmeta.IssuerReference) {
	t.Helper()
	if c == nil {
		t.Fatal("no Certificate rendered")
	}
	s := c.Spec
	if s.SecretName != "mx-tls" || !reflect.DeepEqual(s.DNSNames, []string{"smtp.example.com"}) || s.IssuerRef != issuer {
		t.Errorf("certificate secret %q dnsNames %v issuer %+v; want mx-tls, [smtp.example.com], %+v", s.SecretName, s.DNSNames, s.IssuerRef, issuer)
	}
	if s.PrivateKey == nil || s.PrivateKey.RotationPolicy != certmanagerv1.RotationPolicyAlways {
		t.Errorf("private key = %+v, want rotationPolicy Always", s.PrivateKey)
	}
	if !reflect.DeepEqual(s.Usages, []certmanagerv1.KeyUsage{certmanagerv1.UsageServerAuth}) {
		t.Errorf("usages = %v, want [server auth]", s.Usages)
	}
	if _, ok := s.SecretTemplate.Labels[LabelAppInstance]; ok {
		t.Error("the TLS Secret would carry app.kubernetes.io/instance (Argo CD would prune it)")
	}
}

func TestRenderRelayPDB(t *testing.T) {
	for _, replicas := range []int32{0, 1, 3} {
		t.Run(strconv.Itoa(int(replicas)), func(t *testing.T) {
			objs := mustRender(t, v1alpha1test.Relay("mail", "mx", v1alpha1test.WithReplicas(replicas)))
			if got := *objs.Deployment.Spec.Replicas; got != replicas {
				t.Errorf("deployment replicas = %d, want %d", got, replicas)
			}
			pdb := objs.PDB.Spec
			// One pod at a time may go; with a single replica that one pod
			// may go too, so a drain is never blocked.
			if pdb.MaxUnavailable == nil || *pdb.MaxUnavailable != intstr.FromInt32(1) || pdb.MinAvailable != nil {
				t.Errorf("pdb = maxUnavailable %v minAvailable %v, want maxUnavailable 1 only", pdb.MaxUnavailable, pdb.MinAvailable)
			}
			if !reflect.DeepEqual(pdb.Selector.MatchLabels, objs.Deployment.Spec.Selector.MatchLabels) {
				t.Errorf("pdb selector %v differs from the deployment's", pdb.Selector.MatchLabels)
			}
		})
	}
}

func TestRenderRelayService(t *testing.T) {
	lb := func(policy corev1.ServiceExternalTrafficPolicy) v1alpha1test.RelayOption {
		return func(r *v1.SmtpRelay) {
			r.Spec.Service = v1.RelayService{
				Type:                     corev1.ServiceTypeLoadBalancer,
				ExternalTrafficPolicy:    policy,
				Annotations:              map[string]string{"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
				LoadBalancerClass:        ptr.To("example.com/lb"),
				LoadBalancerSourceRanges: []string{"203.0.113.0/24"},
			}
		}
	}
	tests := []struct {
		name        string
		relay       *v1.SmtpRelay
		wantType    corev1.ServiceType
		wantPolicy  corev1.ServiceExternalTrafficPolicy
		wantAnnot   string
		wantLBClass string
		wantRanges  []string
	}{
		{"default ClusterIP", v1alpha1test.Relay("mail", "mx"), corev1.ServiceTypeClusterIP, "", "", "", nil},
		{"LoadBalancer keeps client addresses", v1alpha1test.Relay("mail", "mx", lb("")), corev1.ServiceTypeLoadBalancer,
			corev1.ServiceExternalTrafficPolicyLocal, "nlb", "example.com/lb", []string{"203.0.113.0/24"}},
		{"LoadBalancer told Cluster", v1alpha1test.Relay("mail", "mx", lb(corev1.ServiceExternalTrafficPolicyCluster)), corev1.ServiceTypeLoadBalancer,
			corev1.ServiceExternalTrafficPolicyCluster, "nlb", "example.com/lb", []string{"203.0.113.0/24"}},
		{"NodePort", v1alpha1test.Relay("mail", "mx", func(r *v1.SmtpRelay) { r.Spec.Service.Type = corev1.ServiceTypeNodePort }),
			corev1.ServiceTypeNodePort, corev1.ServiceExternalTrafficPolicyLocal, "", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := mustRender(t, tt.relay).Service
			got := []any{svc.Spec.Type, svc.Spec.ExternalTrafficPolicy, svc.Annotations["service.beta.kubernetes.io/aws-load-balancer-type"],
				ptr.Deref(svc.Spec.LoadBalancerClass, ""), svc.Spec.LoadBalancerSourceRanges}
			want := []any{tt.wantType, tt.wantPolicy, tt.wantAnnot, tt.wantLBClass, tt.wantRanges}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("service (type, policy, annotation, class, ranges):\n got %v\nwant %v", got, want)
			}
			if !reflect.DeepEqual(svc.Labels, relayLabels(tt.relay)) {
				t.Errorf("service labels %v, want the relay's %v", svc.Labels, relayLabels(tt.relay))
			}
		})
	}
}

func TestRenderRelayResources(t *testing.T) {
	withLimit := func(r *v1.SmtpRelay) {
		r.Spec.Resources = corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}}
	}
	tests := []struct {
		name             string
		relay            *v1.SmtpRelay
		wantCPU, wantMem string // requests; "" means none (a limit stands for it)
	}{
		{"defaults", v1alpha1test.Relay("mail", "mx"), "100m", "128Mi"},
		{"cpu request kept, memory defaulted", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithCPURequest("2")), "2", "128Mi"},
		{"memory limit stands for its request", v1alpha1test.Relay("mail", "mx", withLimit), "100m", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustRender(t, tt.relay).Deployment.Spec.Template.Spec.Containers[0]
			got := [2]string{}
			if q, ok := c.Resources.Requests[corev1.ResourceCPU]; ok {
				got[0] = q.String()
			}
			if q, ok := c.Resources.Requests[corev1.ResourceMemory]; ok {
				got[1] = q.String()
			}
			if got != [2]string{tt.wantCPU, tt.wantMem} {
				t.Errorf("requests (cpu, memory) = %v, want [%s %s]", got, tt.wantCPU, tt.wantMem)
			}
			if c.Resources.Limits.Cpu().Sign() != 0 {
				t.Errorf("cpu limit %v set by default; a throttled relay misses SMTP timeouts", c.Resources.Limits.Cpu())
			}
		})
	}
	own := v1alpha1test.Relay("mail", "mx", v1alpha1test.WithCPURequest("2"))
	mustRender(t, own)
	if len(own.Spec.Resources.Requests) != 1 {
		t.Errorf("rendering changed the relay's own spec: %v", own.Spec.Resources.Requests)
	}
}

func TestRenderRelayDrain(t *testing.T) {
	tests := []struct {
		name      string
		drain     *metav1.Duration
		wantDrain time.Duration
		wantGrace int64
	}{
		{"default", nil, 30 * time.Second, 45},
		{"long DATA over slow links", &metav1.Duration{Duration: 10 * time.Minute}, 10 * time.Minute, 615},
		{"fractions round up", &metav1.Duration{Duration: 1500 * time.Millisecond}, 1500 * time.Millisecond, 17},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := mustRender(t, v1alpha1test.Relay("mail", "mx", func(r *v1.SmtpRelay) { r.Spec.DrainGracePeriod = tt.drain }))
			if got := loadRendered(t, objs.ConfigMap).DrainGracePeriod.Duration; got != tt.wantDrain {
				t.Errorf("relay drain = %v, want %v", got, tt.wantDrain)
			}
			pod := objs.Deployment.Spec.Template.Spec
			if got := *pod.TerminationGracePeriodSeconds; got != tt.wantGrace {
				t.Errorf("termination grace = %ds, want %ds (preStop + drain + margin)", got, tt.wantGrace)
			}
			preStop := pod.Containers[0].Lifecycle.PreStop.Sleep.Seconds
			if float64(*pod.TerminationGracePeriodSeconds) < float64(preStop)+tt.wantDrain.Seconds()+5 {
				t.Errorf("termination grace %ds leaves under 5s after preStop %ds and drain %v", *pod.TerminationGracePeriodSeconds, preStop, tt.wantDrain)
			}
		})
	}
}

func TestRenderRelayRole(t *testing.T) {
	objs := mustRender(t, v1alpha1test.Relay("mail", "mx"))
	rules := objs.Role.Rules
	if len(rules) != 2 || !reflect.DeepEqual(rules[0].APIGroups, []string{""}) ||
		!reflect.DeepEqual(rules[0].Resources, []string{"secrets"}) ||
		!reflect.DeepEqual(rules[0].Verbs, []string{"list", "watch"}) ||
		!reflect.DeepEqual(rules[0].ResourceNames, wire.ShardSecretNames("mx")) ||
		!reflect.DeepEqual(rules[1].Resources, []string{"configmaps"}) || !reflect.DeepEqual(rules[1].Verbs, []string{"patch"}) ||
		!reflect.DeepEqual(rules[1].ResourceNames, []string{"mx-webhook-status"}) {
		t.Errorf("role rules = %+v, want list and watch of the relay's own shards, and patch of its webhook status only", rules)
	}
	rb := objs.RoleBinding
	if rb.RoleRef.Kind != "Role" || rb.RoleRef.Name != "mx-relay" || len(rb.Subjects) != 1 ||
		rb.Subjects[0].Kind != "ServiceAccount" || rb.Subjects[0].Name != "mx-relay" || rb.Subjects[0].Namespace != "mail" {
		t.Errorf("role binding = %+v %+v, want Role mx-relay to ServiceAccount mail/mx-relay", rb.RoleRef, rb.Subjects)
	}
}

// restrictedViolations checks a pod spec against the PodSecurity
// "restricted" profile (its pod-level and container-level controls). The
// envtest suite also submits the rendered pod to a namespace that enforces
// the profile.
func restrictedViolations(spec corev1.PodSpec) []string {
	var v []string
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		v = append(v, "host namespaces")
	}
	for _, vol := range spec.Volumes {
		s := vol.VolumeSource
		if s.ConfigMap == nil && s.Secret == nil && s.EmptyDir == nil && s.Projected == nil &&
			s.DownwardAPI == nil && s.PersistentVolumeClaim == nil && s.CSI == nil && s.Ephemeral == nil {
			v = append(v, "volume type of "+vol.Name)
		}
	}
	psc := spec.SecurityContext
	podNonRoot := psc != nil && ptr.Deref(psc.RunAsNonRoot, false)
	podSeccomp := psc != nil && psc.SeccompProfile != nil && psc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault
	if psc != nil && psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		v = append(v, "pod runs as root")
	}
	for _, c := range append(append([]corev1.Container(nil), spec.InitContainers...), spec.Containers...) {
		sc := c.SecurityContext
		if sc == nil {
			v = append(v, c.Name+": no security context")
			continue
		}
		if ptr.Deref(sc.Privileged, false) {
			v = append(v, c.Name+": privileged")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			v = append(v, c.Name+": allowPrivilegeEscalation not false")
		}
		if !podNonRoot && !ptr.Deref(sc.RunAsNonRoot, false) {
			v = append(v, c.Name+": runAsNonRoot not true")
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			v = append(v, c.Name+": runs as root")
		}
		if !podSeccomp && (sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault) {
			v = append(v, c.Name+": seccomp not RuntimeDefault")
		}
		if sc.Capabilities == nil || !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			v = append(v, c.Name+": capabilities not dropping ALL")
		}
		if sc.Capabilities != nil {
			for _, add := range sc.Capabilities.Add {
				if add != "NET_BIND_SERVICE" {
					v = append(v, c.Name+": adds "+string(add))
				}
			}
		}
		for _, p := range c.Ports {
			if p.HostPort != 0 {
				v = append(v, c.Name+": host port")
			}
		}
	}
	return v
}

func TestRenderRelayPodSecurity(t *testing.T) {
	spec := mustRender(t, v1alpha1test.Relay("mail", "mx")).Deployment.Spec.Template.Spec
	if v := restrictedViolations(spec); len(v) > 0 {
		t.Errorf("pod is not PodSecurity restricted: %v", v)
	}
	withSidecar := mustRender(t, v1alpha1test.Relay("mail", "mx", v1alpha1test.WithRateLimit(fullRateLimit()))).Deployment.Spec.Template.Spec
	if v := restrictedViolations(withSidecar); len(v) > 0 {
		t.Errorf("pod with the rate-limit sidecar is not PodSecurity restricted: %v", v)
	}
	c := spec.Containers[0].SecurityContext
	if !ptr.Deref(c.ReadOnlyRootFilesystem, false) || ptr.Deref(c.RunAsUser, 0) != 65532 || len(c.Capabilities.Add) != 0 {
		t.Errorf("container security = %+v, want read-only root, uid 65532, no added capabilities", c)
	}
	// No port below 1024 is bound inside the pod: the process has no
	// capability that would allow it.
	for _, p := range spec.Containers[0].Ports {
		if p.ContainerPort < 1024 {
			t.Errorf("container port %s = %d needs a capability", p.Name, p.ContainerPort)
		}
	}
}

func TestRelayConfigHash(t *testing.T) {
	base := v1alpha1test.Relay("mail", "mx")
	hash := func(r *v1.SmtpRelay) string {
		return mustRender(t, r).Deployment.Spec.Template.Annotations[AnnotationConfigHash]
	}
	tests := []struct {
		name    string
		relay   *v1.SmtpRelay
		changes bool
	}{
		{"same spec", v1alpha1test.Relay("mail", "mx"), false},
		{"replicas only", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithReplicas(5)), false},
		{"resources only", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithCPURequest("1")), false},
		{"hostname", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithHostname("mx.example.org")), true},
		{"banner", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithBanner("other")), true},
		{"listeners", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithListeners(v1.RelayListener{Name: "alt", Port: 2525})), true},
	}
	if hash(v1alpha1test.Relay("mail", "mx", v1alpha1test.WithReplicas(5), v1alpha1test.WithRateLimit(fullRateLimit()))) != hash(v1alpha1test.Relay("mail", "mx", v1alpha1test.WithRateLimit(fullRateLimit()))) {
		t.Error("scaling a relay with the sidecar changes the hash")
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hash(tt.relay) != hash(base); got != tt.changes {
				t.Errorf("hash changed = %v, want %v", got, tt.changes)
			}
		})
	}
}

func TestRenderRelayErrors(t *testing.T) {
	tests := []struct {
		name    string
		relay   *v1.SmtpRelay
		opts    Options
		wantErr string
	}{
		{"no image anywhere", v1alpha1test.Relay("mail", "mx"), Options{}, "spec.image is empty"},
		{"name is not a DNS label", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithName("mx.example")), testRenderOptions, "cannot name a Service"},
		{"listener named metrics", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithListeners(v1.RelayListener{Name: "metrics", Port: 2525})), testRenderOptions, `listener "metrics"`},
		{"listener on the metrics port", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithListeners(v1.RelayListener{Name: "m", Port: 9090})), testRenderOptions, "container port 9090"},
		{"remapped port collides", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithListeners(
			v1.RelayListener{Name: "smtp", Port: 25}, v1.RelayListener{Name: "high", Port: 10025})), testRenderOptions, "container port 10025"},
		{"invalid port name", v1alpha1test.Relay("mail", "mx", v1alpha1test.WithListeners(v1.RelayListener{Name: "a--b", Port: 2525})), testRenderOptions, "not a valid port name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Relay(tt.relay, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestRenderRelayRateLimit(t *testing.T) {
	t.Run("without a sidecar each pod counts its share", func(t *testing.T) {
		objs := mustRender(t, v1alpha1test.Relay("mail", "mx", v1alpha1test.WithReplicas(3)))
		if n := len(objs.Deployment.Spec.Template.Spec.InitContainers); n != 0 {
			t.Errorf("%d init containers, want none", n)
		}
		c := loadRendered(t, objs.ConfigMap)
		if c.Budget.Sidecar != nil || c.Budget.PodShare != 3 {
			t.Errorf("budget = %+v, want a share of 3 and no sidecar", c.Budget)
		}
	})
	t.Run("sidecar", func(t *testing.T) {
		relay := v1alpha1test.Relay("mail", "mx", v1alpha1test.WithReplicas(3), v1alpha1test.WithRateLimit(fullRateLimit()))
		relay.Spec.DefaultBudgetPerMinute = 1200
		objs := mustRender(t, relay)
		c := loadRendered(t, objs.ConfigMap)
		if c.Budget.Sidecar == nil || c.Budget.Sidecar.Address != "127.0.0.1:8081" || c.Budget.PodShare != 0 {
			t.Errorf("budget = %+v, want the sidecar on 127.0.0.1:8081", c.Budget)
		}
		spec := objs.Deployment.Spec.Template.Spec
		if len(spec.InitContainers) != 1 {
			t.Fatalf("init containers = %d, want the sidecar", len(spec.InitContainers))
		}
		sc := spec.InitContainers[0]
		if sc.Name != "ratelimit" || ptr.Deref(sc.RestartPolicy, "") != corev1.ContainerRestartPolicyAlways || sc.StartupProbe == nil {
			t.Errorf("sidecar = %s restartPolicy %v startupProbe %v, want a native sidecar with a startup probe", sc.Name, sc.RestartPolicy, sc.StartupProbe)
		}
		want := []string{"ratelimit", "--listen", "127.0.0.1:8081", "--metrics-address", ":9091",
			"--redis-address", "redis.mail.svc:6379", "--failure-mode", "deny", "--default-limit", "1200",
			"--scope", "mail/mx", "--deadline", "20ms", "--redis-username", "mailfleet",
			"--redis-password-file", "/etc/mailfleet/redis/password/password",
			"--redis-tls", "--redis-ca-file", "/etc/mailfleet/redis/ca/ca.crt"}
		if !reflect.DeepEqual(sc.Args, want) {
			t.Errorf("sidecar args\n got %q\nwant %q", sc.Args, want)
		}
		if got := sc.Resources.Requests; got.Cpu().String() != "50m" || got.Memory().String() != "64Mi" {
			t.Errorf("sidecar requests = %v, want the defaults 50m CPU and 64Mi", got)
		}
		if len(sc.Env) != 1 || sc.Env[0].Name != "MAILFLEET_RATELIMIT_REPLICAS" || sc.Env[0].ValueFrom == nil ||
			sc.Env[0].ValueFrom.ConfigMapKeyRef == nil || sc.Env[0].ValueFrom.ConfigMapKeyRef.Key != "replicas" ||
			sc.Env[0].ValueFrom.ConfigMapKeyRef.Name != objs.ConfigMap.Name {
			t.Errorf("sidecar env = %+v, want MAILFLEET_RATELIMIT_REPLICAS from the ConfigMap's replicas", sc.Env)
		}
		if got := objs.ConfigMap.Data["replicas"]; got != "3" {
			t.Errorf("ConfigMap replicas = %q, want 3", got)
		}
		vols := map[string]corev1.Volume{}
		for _, v := range spec.Volumes {
			vols[v.Name] = v
		}
		for name, want := range map[string][2]string{"redis-password": {"redis-auth", "pw"}, "redis-ca": {"redis-ca", "ca.pem"}} {
			v, ok := vols[name]
			if !ok || v.Secret == nil || v.Secret.SecretName != want[0] || len(v.Secret.Items) != 1 || v.Secret.Items[0].Key != want[1] {
				t.Errorf("volume %s = %+v, want only key %s of Secret %s", name, v.VolumeSource, want[1], want[0])
			}
		}
		if got := ReferencedSecrets(relay); len(got) != 2 {
			t.Errorf("referenced secrets = %+v, want the password and the CA", got)
		}
	})
	t.Run("defaults", func(t *testing.T) {
		relay := v1alpha1test.Relay("mail", "mx", v1alpha1test.WithRateLimit(&v1.RelayRateLimit{Redis: v1.RedisEndpoint{Address: "redis:6379"}}))
		args := strings.Join(mustRender(t, relay).Deployment.Spec.Template.Spec.InitContainers[0].Args, " ")
		for _, want := range []string{"--failure-mode allow", "--default-limit 30000"} {
			if !strings.Contains(args, want) {
				t.Errorf("args %q lack %q", args, want)
			}
		}
		for _, unwanted := range []string{"--redis-tls", "--redis-password-file", "--deadline"} {
			if strings.Contains(args, unwanted) {
				t.Errorf("args %q have %q", args, unwanted)
			}
		}
	})
}

func TestRenderRelayQueueAndDelivery(t *testing.T) {
	relay := v1alpha1test.Relay("mail", "mx", func(r *v1.SmtpRelay) {
		r.Spec.Queue.NATS = v1.NATSQueue{
			URL:                  "tls://nats-0:4222,tls://nats-1:4222",
			CredentialsSecretRef: &v1.SecretKeySelector{Name: "nats-creds", Key: "relay.creds"},
			CASecretRef:          &v1.SecretKeySelector{Name: "nats-ca", Key: "ca.pem"},
			Stream:               "OUTBOUND",
			Replicas:             5,
		}
		r.Spec.Delivery = v1.RelayDelivery{
			Smarthost: &v1.Smarthost{
				Host: "smtp.provider.example", Port: 2525, TLS: v1.SmarthostTLSImplicit,
				AuthSecretRef: &v1.LocalSecretReference{Name: "provider"},
				CASecretRef:   &v1.SecretKeySelector{Name: "provider-ca", Key: "ca.crt"},
			},
			Workers:              4,
			Retry:                v1.RetrySchedule{MinBackoff: &metav1.Duration{Duration: time.Minute}, MaxBackoff: &metav1.Duration{Duration: time.Hour}, MaxAge: &metav1.Duration{Duration: 48 * time.Hour}},
			LabelHeader:          "X-Tenant-Label",
			AllowedDestinations:  []string{"10.20.0.0/16"},
			AllowAddressLiterals: true,
			MTASTS:               "Ignore",
			Destinations: []v1.RelayDestination{
				{Name: "bank", Domains: []string{"bank.example", "pay.example"}, TLS: "Verify"},
				{Name: "partner", Domains: []string{"partner.example"}, TLS: "Required"},
				{Name: "google", MXHosts: []string{"google.com"}, MaxConnections: ptr.To[int32](5), MaxMessagesPerMinute: ptr.To[int32](600),
					MaxMessagesPerConnection: ptr.To[int32](50)},
			},
		}
	})
	objs := mustRender(t, relay)
	c := loadRendered(t, objs.ConfigMap)
	q := c.Queue.NATS
	if q == nil || q.URL != "tls://nats-0:4222,tls://nats-1:4222" || q.Stream != "OUTBOUND" || q.Replicas != 5 ||
		q.CredentialsFile != "/etc/mailfleet/nats/creds/nats.creds" || q.CAFile != "/etc/mailfleet/nats/ca/ca.crt" || c.Queue.Embedded != nil {
		t.Errorf("queue = %+v", c.Queue)
	}
	d := c.Delivery
	sh := d.Smarthost
	if sh == nil || sh.Host != "smtp.provider.example" || sh.Port != 2525 || sh.TLS != "implicit" ||
		sh.UsernameFile != "/etc/mailfleet/smarthost/auth/username" || sh.PasswordFile != "/etc/mailfleet/smarthost/auth/password" ||
		sh.CAFile != "/etc/mailfleet/smarthost/ca/ca.crt" {
		t.Errorf("smarthost = %+v", sh)
	}
	if d.Workers != 4 || d.Backoff.Min.Duration != time.Minute || d.Backoff.Max.Duration != time.Hour ||
		d.Expiry.Duration != 48*time.Hour || d.LabelHeader != "X-Tenant-Label" ||
		len(d.AllowedDestinations) != 1 || d.AllowedDestinations[0] != "10.20.0.0/16" || !d.AllowAddressLiterals {
		t.Errorf("delivery = %+v", d)
	}
	if ds := d.Destinations; !d.IgnoreMTASTS || len(ds) != 3 || ds[0].TLS != "required" || len(ds[0].Domains) != 2 || ds[1].TLS != "encrypt" ||
		ds[2].Name != "google" || ds[2].TLS != "" || ds[2].MXHosts[0] != "google.com" || ds[2].MaxConnections != 5 || ds[2].MaxPerMinute != 600 || ds[2].MaxMessagesPerConnection != 50 {
		t.Errorf("delivery destinations = %v %+v", d.IgnoreMTASTS, d.Destinations)
	}

	spec := objs.Deployment.Spec.Template.Spec
	mounts := map[string]string{}
	for _, m := range spec.Containers[0].VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	vols := map[string]*corev1.SecretVolumeSource{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v.Secret
	}
	for _, want := range []struct{ volume, dir, secret, keys string }{
		{"nats-creds", "/etc/mailfleet/nats/creds", "nats-creds", "relay.creds>nats.creds"},
		{"nats-ca", "/etc/mailfleet/nats/ca", "nats-ca", "ca.pem>ca.crt"},
		{"smarthost-auth", "/etc/mailfleet/smarthost/auth", "provider", "username>username password>password"},
		{"smarthost-ca", "/etc/mailfleet/smarthost/ca", "provider-ca", "ca.crt>ca.crt"},
	} {
		if mounts[want.volume] != want.dir {
			t.Errorf("mount %s at %q, want %q", want.volume, mounts[want.volume], want.dir)
		}
		v := vols[want.volume]
		if v == nil || v.SecretName != want.secret {
			t.Errorf("volume %s = %+v, want Secret %s", want.volume, v, want.secret)
			continue
		}
		var keys []string
		for _, it := range v.Items {
			keys = append(keys, it.Key+">"+it.Path)
		}
		if got := strings.Join(keys, " "); got != want.keys {
			t.Errorf("volume %s projects %q, want %q", want.volume, got, want.keys)
		}
	}
	if got := len(ReferencedSecrets(relay)); got != 4 {
		t.Errorf("%d referenced Secrets, want 4", got)
	}

	plain := loadRendered(t, mustRender(t, v1alpha1test.Relay("mail", "mx")).ConfigMap)
	if plain.Delivery.Smarthost != nil || plain.Queue.NATS.Stream != "MAILFLEET_MAIL_MX" {
		t.Errorf("defaults: delivery %+v, stream %q; want direct MX delivery and the relay's own stream", plain.Delivery, plain.Queue.NATS.Stream)
	}
}

// TestRenderRelayProxyProtocol: a listener behind a PROXY-protocol load
// balancer reaches relay.yaml with its trusted sources.
func TestRenderRelayProxyProtocol(t *testing.T) {
	relay := v1alpha1test.Relay("mail", "mx", v1alpha1test.WithListeners(
		v1.RelayListener{Name: "submission", Port: 587, ProxyProtocol: true, TrustedProxies: []string{"10.0.0.0/8", "fd00::/8"}},
		v1.RelayListener{Name: "smtps", Port: 465, TLS: v1.ListenerImplicit}))
	cfg := loadRendered(t, mustRender(t, relay).ConfigMap)
	got := map[string]config.Listener{}
	for _, l := range cfg.Listeners {
		got[l.Name] = l
	}
	if l := got["submission"]; !l.ProxyProtocol || !slices.Equal(l.TrustedProxies, []string{"10.0.0.0/8", "fd00::/8"}) {
		t.Errorf("submission: %+v", l)
	}
	if l := got["smtps"]; l.ProxyProtocol || l.TrustedProxies != nil {
		t.Errorf("smtps: %+v", l)
	}
}

func fullRateLimit() *v1.RelayRateLimit {
	return &v1.RelayRateLimit{
		Redis: v1.RedisEndpoint{
			Address:           "redis.mail.svc:6379",
			Username:          "mailfleet",
			PasswordSecretRef: &v1.SecretKeySelector{Name: "redis-auth", Key: "pw"},
			TLS:               &v1.RedisTLS{CASecretRef: &v1.SecretKeySelector{Name: "redis-ca", Key: "ca.pem"}},
		},
		FailureMode: v1.RateLimitFailureDeny,
		Deadline:    &metav1.Duration{Duration: 20 * time.Millisecond},
	}
}
