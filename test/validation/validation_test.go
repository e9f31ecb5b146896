package validation

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/v1alpha1/v1alpha1test"
)

// TestCRDValidation applies invalid resources to the real API server and
// checks each is refused with a message that names what to fix.
func TestCRDValidation(t *testing.T) {
	ns := env.Namespace(t, nil)
	relay := func(mut func(*v1.SmtpRelay)) client.Object { return v1alpha1test.Relay(ns, "r", mut) }
	account := func(mut func(*v1.SmtpAccount)) client.Object {
		a := &v1.SmtpAccount{
			ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: ns},
			Spec:       v1.SmtpAccountSpec{RelayRef: v1.RelayReference{Name: "r"}},
		}
		mut(a)
		return a
	}
	label := func(mut func(*v1.SmtpLabel)) client.Object {
		l := &v1.SmtpLabel{
			ObjectMeta: metav1.ObjectMeta{Name: "l", Namespace: ns},
			Spec:       v1.SmtpLabelSpec{AccountRef: "a", LabelID: "1001"},
		}
		mut(l)
		return l
	}
	domain := func(mut func(*v1.SmtpDomain)) client.Object {
		d := &v1.SmtpDomain{ObjectMeta: metav1.ObjectMeta{Name: "d", Namespace: ns}, Spec: v1.SmtpDomainSpec{Domain: "acme.example"}}
		mut(d)
		return d
	}
	suppression := func(mut func(*v1.SmtpSuppression)) client.Object {
		s := &v1.SmtpSuppression{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: ns},
			Spec: v1.SmtpSuppressionSpec{AccountRef: "a", Addresses: []string{"someone@example.com"}}}
		mut(s)
		return s
	}
	tests := []struct {
		name string
		obj  client.Object
		want string // "" means accepted
	}{
		{"valid suppression", suppression(func(s *v1.SmtpSuppression) { s.Spec.Reason = "asked by phone" }), ""},
		{"suppressed address with a line break", suppression(func(s *v1.SmtpSuppression) {
			s.Spec.Addresses = []string{"a@example.com\r\nRCPT TO:<b@example.com>"}
		}), "spec.addresses[0]"},
		{"suppressed address without a domain", suppression(func(s *v1.SmtpSuppression) { s.Spec.Addresses = []string{"someone"} }), "spec.addresses[0]"},
		{"suppression without addresses", suppression(func(s *v1.SmtpSuppression) { s.Spec.Addresses = nil }), "spec.addresses"},
		{"suppression reason with a control character", suppression(func(s *v1.SmtpSuppression) { s.Spec.Reason = "a\nb" }), "spec.reason"},
		{"too many suppressed addresses", suppression(func(s *v1.SmtpSuppression) {
			s.Spec.Addresses = nil
			for i := range 1001 {
				s.Spec.Addresses = append(s.Spec.Addresses, fmt.Sprintf("a%d@example.com", i))
			}
		}), "spec.addresses"},
		{"valid domain", domain(func(d *v1.SmtpDomain) {
			d.Spec.DKIM = v1.DomainDKIM{Ed25519: true, RotateAfter: &metav1.Duration{Duration: 2160 * time.Hour}, SelectorPrefix: "mf"}
		}), ""},
		{"domain with upper case", domain(func(d *v1.SmtpDomain) { d.Spec.Domain = "Acme.Example" }), "spec.domain"},
		{"domain without a dot", domain(func(d *v1.SmtpDomain) { d.Spec.Domain = "localhost" }), "spec.domain"},
		{"rotation sooner than DNS", domain(func(d *v1.SmtpDomain) { d.Spec.DKIM.RotateAfter = &metav1.Duration{Duration: time.Hour} }),
			"dkim.rotateAfter must be at least 24h"},
		{"grace too short", domain(func(d *v1.SmtpDomain) { d.Spec.DKIM.GracePeriod = &metav1.Duration{Duration: time.Minute} }),
			"dkim.gracePeriod must be at least 1h"},
		{"selector prefix with a dot", domain(func(d *v1.SmtpDomain) { d.Spec.DKIM.SelectorPrefix = "a.b" }), "spec.dkim.selectorPrefix"},
		{"domain name too long for its key Secret", domain(func(d *v1.SmtpDomain) { d.Name = strings.Repeat("d", 59) }),
			"an SmtpDomain's name must be at most 58 characters"},
		{"valid relay", relay(func(*v1.SmtpRelay) {}), ""},
		{"hostname not a DNS name", relay(func(r *v1.SmtpRelay) { r.Spec.Hostname = "Smtp_Example" }), "hostname must be a lower-case DNS name"},
		{"no TLS source", relay(func(r *v1.SmtpRelay) { r.Spec.TLS = v1.RelayTLS{} }), "tls: set exactly one of issuerRef"},
		{"two TLS sources", relay(func(r *v1.SmtpRelay) { r.Spec.TLS.SecretName = "tls" }), "tls: set exactly one of issuerRef"},
		{"negative replicas", relay(func(r *v1.SmtpRelay) { r.Spec.Replicas = ptr.To[int32](-1) }), "spec.replicas"},
		{"zero budget", relay(func(r *v1.SmtpRelay) { r.Spec.DefaultBudgetPerMinute = -5 }), "spec.defaultBudgetPerMinute"},
		{"duplicate listener port", relay(func(r *v1.SmtpRelay) {
			r.Spec.Listeners = []v1.RelayListener{{Name: "a", Port: 25}, {Name: "b", Port: 25}}
		}), "listeners: ports must be unique"},
		{"bad listener TLS mode", relay(func(r *v1.SmtpRelay) {
			r.Spec.Listeners = []v1.RelayListener{{Name: "a", Port: 25, TLS: "Maybe"}}
		}), "spec.listeners[0].tls"},
		{"an HTTP listener beside SMTP", relay(func(r *v1.SmtpRelay) {
			r.Spec.Listeners = []v1.RelayListener{{Name: "smtp", Port: 25}, {Name: "api", Port: 8443, Kind: v1.ListenerHTTP}}
		}), ""},
		{"two HTTP listeners", relay(func(r *v1.SmtpRelay) {
			r.Spec.Listeners = []v1.RelayListener{{Name: "smtp", Port: 25}, {Name: "api", Port: 8443, Kind: v1.ListenerHTTP}, {Name: "api2", Port: 9443, Kind: v1.ListenerHTTP}}
		}), "listeners: at most one listener of kind HTTP"},
		{"only an HTTP listener", relay(func(r *v1.SmtpRelay) {
			r.Spec.Listeners = []v1.RelayListener{{Name: "api", Port: 8443, Kind: v1.ListenerHTTP}}
		}), "listeners: at least one listener of kind SMTP is required"},
		{"HTTP listener with implicit TLS", relay(func(r *v1.SmtpRelay) {
			r.Spec.Listeners = []v1.RelayListener{{Name: "smtp", Port: 25}, {Name: "api", Port: 8443, Kind: v1.ListenerHTTP, TLS: v1.ListenerImplicit}}
		}), "a listener of kind HTTP always serves HTTPS"},
		{"suppression dropped", relay(func(r *v1.SmtpRelay) { r.Spec.Suppression = &v1.RelaySuppression{OnSubmission: "Drop"} }), ""},
		{"destination groups", relay(func(r *v1.SmtpRelay) {
			r.Spec.Delivery.Destinations = []v1.RelayDestination{
				{Name: "bank", Domains: []string{"bank.example"}, TLS: "Verify"},
				{Name: "google", MXHosts: []string{"google.com"}, MaxConnections: ptr.To[int32](10), MaxMessagesPerMinute: ptr.To[int32](1000),
					MaxMessagesPerConnection: ptr.To[int32](100)},
			}
		}), ""},
		{"destination with no messages per connection", relay(func(r *v1.SmtpRelay) {
			r.Spec.Delivery.Destinations = []v1.RelayDestination{{Name: "a", Domains: []string{"a.example"}, MaxMessagesPerConnection: ptr.To[int32](0)}}
		}), "spec.delivery.destinations[0].maxMessagesPerConnection"},
		{"destination with neither domains nor MX hosts", relay(func(r *v1.SmtpRelay) {
			r.Spec.Delivery.Destinations = []v1.RelayDestination{{Name: "empty", TLS: "Required"}}
		}), "a destination needs domains, mxHosts or both"},
		{"destination named twice", relay(func(r *v1.SmtpRelay) {
			r.Spec.Delivery.Destinations = []v1.RelayDestination{{Name: "a", Domains: []string{"a.example"}}, {Name: "a", Domains: []string{"b.example"}}}
		}), "Duplicate value"},
		{"destination TLS unknown", relay(func(r *v1.SmtpRelay) {
			r.Spec.Delivery.Destinations = []v1.RelayDestination{{Name: "a", Domains: []string{"a.example"}, TLS: "Strict"}}
		}), "spec.delivery.destinations[0].tls"},
		{"MTA-STS mode unknown", relay(func(r *v1.SmtpRelay) { r.Spec.Delivery.MTASTS = "Enforce" }), "spec.delivery.mtaSTS"},
		{"suppression mode unknown", relay(func(r *v1.SmtpRelay) { r.Spec.Suppression = &v1.RelaySuppression{OnSubmission: "Ignore"} }),
			"spec.suppression.onSubmission"},
		{"HTTP listener behind a PROXY protocol load balancer", relay(func(r *v1.SmtpRelay) {
			r.Spec.Listeners = []v1.RelayListener{{Name: "smtp", Port: 25}, {Name: "api", Port: 8443, Kind: v1.ListenerHTTP,
				ProxyProtocol: true, TrustedProxies: []string{"10.0.0.0/8"}}}
		}), ""},
		{"unknown listener kind", relay(func(r *v1.SmtpRelay) {
			r.Spec.Listeners = []v1.RelayListener{{Name: "smtp", Port: 25, Kind: "GRPC"}}
		}), "spec.listeners[0].kind"},
		{"selector without from=Selector", relay(func(r *v1.SmtpRelay) {
			r.Spec.Accounts.Namespaces = v1.AccountNamespaces{From: v1.NamespacesFromAll, Selector: &metav1.LabelSelector{}}
		}), "namespaces.selector is required when from is Selector, and only then"},
		{"from=Selector without selector", relay(func(r *v1.SmtpRelay) {
			r.Spec.Accounts.Namespaces = v1.AccountNamespaces{From: v1.NamespacesFromSelector}
		}), "namespaces.selector is required when from is Selector"},
		{"load balancer service", relay(func(r *v1.SmtpRelay) {
			r.Spec.Service = v1.RelayService{Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyCluster,
				Annotations: map[string]string{"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}, LoadBalancerSourceRanges: []string{"203.0.113.0/24"}}
		}), ""},
		{"traffic policy on ClusterIP", relay(func(r *v1.SmtpRelay) {
			r.Spec.Service = v1.RelayService{ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal}
		}), "service.externalTrafficPolicy applies to NodePort and LoadBalancer only"},
		{"source ranges on NodePort", relay(func(r *v1.SmtpRelay) {
			r.Spec.Service = v1.RelayService{Type: corev1.ServiceTypeNodePort, LoadBalancerSourceRanges: []string{"203.0.113.0/24"}}
		}), "apply to type LoadBalancer only"},
		{"source range not a CIDR", relay(func(r *v1.SmtpRelay) {
			r.Spec.Service = v1.RelayService{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerSourceRanges: []string{"office"}}
		}), "service.loadBalancerSourceRanges must be CIDRs"},
		{"service type", relay(func(r *v1.SmtpRelay) { r.Spec.Service.Type = corev1.ServiceTypeExternalName }), "spec.service.type"},
		{"allowed destination not a CIDR", relay(func(r *v1.SmtpRelay) { r.Spec.Delivery.AllowedDestinations = []string{"intranet"} }),
			"delivery.allowedDestinations must be CIDRs"},
		{"drain too long", relay(func(r *v1.SmtpRelay) { r.Spec.DrainGracePeriod = &metav1.Duration{Duration: time.Hour} }), "drainGracePeriod must be between 1s and 15m"},
		{"no queue", relay(func(r *v1.SmtpRelay) { r.Spec.Queue = v1.RelayQueue{} }), "queue.nats.url must be nats://host:port"},
		{"queue url scheme", relay(func(r *v1.SmtpRelay) { r.Spec.Queue.NATS.URL = "http://nats:4222" }), "queue.nats.url must be nats://host:port"},
		{"proxy protocol without trusted sources", relay(func(r *v1.SmtpRelay) {
			r.Spec.Listeners = []v1.RelayListener{{Name: "submission", Port: 587, ProxyProtocol: true}}
		}), "proxyProtocol needs trustedProxies"},
		{"trusted sources that are not CIDRs", relay(func(r *v1.SmtpRelay) {
			r.Spec.Listeners = []v1.RelayListener{{Name: "submission", Port: 587, ProxyProtocol: true, TrustedProxies: []string{"10.0.0.1"}}}
		}), "must be a CIDR"},
		// Issue 12.23: a password in the URL ended up in a ConfigMap.
		{"queue url with a password", relay(func(r *v1.SmtpRelay) { r.Spec.Queue.NATS.URL = "nats://relay:hunter2@nats:4222" }), "without a user or password"},
		{"second queue url with a user", relay(func(r *v1.SmtpRelay) { r.Spec.Queue.NATS.URL = "nats://nats-0:4222,tls://relay@nats-1:4222" }), "authSecretRef"},
		{"several queue servers", relay(func(r *v1.SmtpRelay) { r.Spec.Queue.NATS.URL = "nats://a:4222,tls://b:4222" }), ""},
		{"queue stream name", relay(func(r *v1.SmtpRelay) { r.Spec.Queue.NATS.Stream = "mail.queue" }), "spec.queue.nats.stream"},
		{"queue replicas", relay(func(r *v1.SmtpRelay) { r.Spec.Queue.NATS.Replicas = 7 }), "spec.queue.nats.replicas"},
		{"valid smarthost", relay(func(r *v1.SmtpRelay) {
			r.Spec.Delivery = v1.RelayDelivery{Smarthost: &v1.Smarthost{Host: "smtp.provider.example", Port: 587, AuthSecretRef: &v1.LocalSecretReference{Name: "provider"}}}
		}), ""},
		{"smarthost TLS mode", relay(func(r *v1.SmtpRelay) {
			r.Spec.Delivery = v1.RelayDelivery{Smarthost: &v1.Smarthost{Host: "smtp.provider.example", TLS: "Sometimes"}}
		}), "spec.delivery.smarthost.tls"},
		{"retry backoffs reversed", relay(func(r *v1.SmtpRelay) {
			r.Spec.Delivery.Retry = v1.RetrySchedule{MinBackoff: &metav1.Duration{Duration: time.Hour}, MaxBackoff: &metav1.Duration{Duration: time.Minute}}
		}), "retry.minBackoff must not exceed retry.maxBackoff"},
		{"retry max age", relay(func(r *v1.SmtpRelay) {
			r.Spec.Delivery.Retry = v1.RetrySchedule{MaxAge: &metav1.Duration{Duration: time.Second}}
		}), "retry.maxAge must be at least 1m"},
		{"label header name", relay(func(r *v1.SmtpRelay) { r.Spec.Delivery.LabelHeader = "X-Label:" }), "spec.delivery.labelHeader"},
		{"valid rate limit", relay(func(r *v1.SmtpRelay) {
			r.Spec.RateLimit = &v1.RelayRateLimit{Redis: v1.RedisEndpoint{Address: "redis.mail.svc:6379"}, Deadline: &metav1.Duration{Duration: 50 * time.Millisecond}}
		}), ""},
		{"redis address without port", relay(func(r *v1.SmtpRelay) {
			r.Spec.RateLimit = &v1.RelayRateLimit{Redis: v1.RedisEndpoint{Address: "redis://redis.mail.svc"}}
		}), "redis.address must be host:port"},
		{"rate limit failure mode", relay(func(r *v1.SmtpRelay) {
			r.Spec.RateLimit = &v1.RelayRateLimit{Redis: v1.RedisEndpoint{Address: "redis:6379"}, FailureMode: "Sometimes"}
		}), "spec.rateLimit.failureMode"},
		{"rate limit deadline", relay(func(r *v1.SmtpRelay) {
			r.Spec.RateLimit = &v1.RelayRateLimit{Redis: v1.RedisEndpoint{Address: "redis:6379"}, Deadline: &metav1.Duration{Duration: 5 * time.Second}}
		}), "rateLimit.deadline must be between 1ms and 1s"},
		{"redis password key", relay(func(r *v1.SmtpRelay) {
			r.Spec.RateLimit = &v1.RelayRateLimit{Redis: v1.RedisEndpoint{Address: "redis:6379", PasswordSecretRef: &v1.SecretKeySelector{Name: "redis"}}}
		}), "spec.rateLimit.redis.passwordSecretRef.key"},

		{"valid account", account(func(*v1.SmtpAccount) {}), ""},
		{"a webhook", account(func(a *v1.SmtpAccount) { a.Spec.Webhooks = []v1.AccountWebhook{hook("https://hooks.example.com/mail")} }), ""},
		{"webhook not http(s)", account(func(a *v1.SmtpAccount) { a.Spec.Webhooks = []v1.AccountWebhook{hook("ftp://hooks.example.com/mail")} }),
			"webhooks[].url must be an absolute https:// URL"},
		{"webhook relative", account(func(a *v1.SmtpAccount) { a.Spec.Webhooks = []v1.AccountWebhook{hook("/mail")} }),
			"webhooks[].url must be an absolute https:// URL"},
		// No relay the operator runs posts to http:// (its configuration
		// has no allowHTTP): refused here rather than never posted to.
		{"webhook over http", account(func(a *v1.SmtpAccount) { a.Spec.Webhooks = []v1.AccountWebhook{hook("http://hooks.example.com/mail")} }),
			"the relays post events to https:// only"},
		// The relay refuses an account whose webhook has no host; admitted,
		// it would cost the account its place in the shard.
		{"webhook without a host", account(func(a *v1.SmtpAccount) { a.Spec.Webhooks = []v1.AccountWebhook{hook("https:///mail")} }),
			"webhooks[].url must name a host"},
		{"webhook with a port and no host", account(func(a *v1.SmtpAccount) { a.Spec.Webhooks = []v1.AccountWebhook{hook("https://:8443/mail")} }),
			"webhooks[].url must name a host"},
		{"webhook on an IPv6 address", account(func(a *v1.SmtpAccount) {
			a.Spec.Webhooks = []v1.AccountWebhook{hook("https://[2001:db8::1]:8443/mail")}
		}), ""},
		{"signing Secret in another namespace", account(func(a *v1.SmtpAccount) {
			a.Spec.Webhooks = []v1.AccountWebhook{{URL: "https://hooks.example.com/mail", SigningSecretRef: v1.WebhookSecretReference{Name: "kube-system/hooks"}}}
		}), "signingSecretRef.name must be the name of a Secret in this namespace"},
		{"signing Secret key", account(func(a *v1.SmtpAccount) {
			a.Spec.Webhooks = []v1.AccountWebhook{{URL: "https://hooks.example.com/mail", SigningSecretRef: v1.WebhookSecretReference{Name: "hooks", Key: "../x y"}}}
		}), "signingSecretRef.key must be a key of a Secret's data"},
		{"webhook with user information", account(func(a *v1.SmtpAccount) {
			a.Spec.Webhooks = []v1.AccountWebhook{hook("https://user:pass@hooks.example.com/mail")}
		}), "must not carry user:password@"},
		{"webhook with a fragment", account(func(a *v1.SmtpAccount) {
			a.Spec.Webhooks = []v1.AccountWebhook{hook("https://hooks.example.com/mail#x")}
		}),
			"must not have a #fragment"},
		{"webhook event unknown", account(func(a *v1.SmtpAccount) {
			h := hook("https://hooks.example.com/mail")
			h.Events = []string{"opened"}
			a.Spec.Webhooks = []v1.AccountWebhook{h}
		}), "spec.webhooks[0].events[0]"},
		{"webhooks with one URL twice", account(func(a *v1.SmtpAccount) {
			a.Spec.Webhooks = []v1.AccountWebhook{hook("https://hooks.example.com/mail"), hook("https://hooks.example.com/mail")}
		}), "Duplicate value"},
		{"eleven webhooks", account(func(a *v1.SmtpAccount) {
			for i := range 11 {
				a.Spec.Webhooks = append(a.Spec.Webhooks, hook(fmt.Sprintf("https://hooks.example.com/%d", i)))
			}
		}), "spec.webhooks: Too many"},
		{"webhook without a signing secret", account(func(a *v1.SmtpAccount) {
			a.Spec.Webhooks = []v1.AccountWebhook{{URL: "https://hooks.example.com/mail"}}
		}), "spec.webhooks[0].signingSecretRef.name"},
		{"apiUser charset", account(func(a *v1.SmtpAccount) { a.Spec.APIUser = "bad#user" }), "spec.apiUser"},
		// Issue 12.17: refused at admission rather than failing at reconcile.
		// Issue 12.11: what the relay's parser refuses is refused here too,
		// so one account cannot freeze its credentials shard.
		{"sender domain label over 63", account(func(a *v1.SmtpAccount) {
			a.Spec.AllowedSenderDomains = []string{strings.Repeat("a", 64) + ".example"}
		}), "spec.allowedSenderDomains[0]"},
		{"sender domain over 253", account(func(a *v1.SmtpAccount) {
			a.Spec.AllowedSenderDomains = []string{strings.Repeat("abcdefghi.", 26) + "example"}
		}), "spec.allowedSenderDomains[0]"},
		{"account name too long", account(func(a *v1.SmtpAccount) { a.Name = strings.Repeat("a", 64) }), "name must be at most 63 characters"},
		{"template label key", account(func(a *v1.SmtpAccount) {
			a.Spec.SecretTemplate = &v1.SecretTemplate{Labels: map[string]v1.LabelValue{"bad key!": "x"}}
		}), "secretTemplate.labels: keys must be label keys"},
		{"template label value", account(func(a *v1.SmtpAccount) {
			a.Spec.SecretTemplate = &v1.SecretTemplate{Labels: map[string]v1.LabelValue{"team": v1.LabelValue(strings.Repeat("x", 64))}}
		}), "spec.secretTemplate.labels.team"},
		{"template annotation key", account(func(a *v1.SmtpAccount) {
			a.Spec.SecretTemplate = &v1.SecretTemplate{Annotations: map[string]string{"/x": "y"}}
		}), "secretTemplate.annotations: keys must be annotation keys"},
		{"valid template", account(func(a *v1.SmtpAccount) {
			a.Spec.SecretTemplate = &v1.SecretTemplate{Labels: map[string]v1.LabelValue{"example.com/team": "mail-1", "empty": ""},
				Annotations: map[string]string{"reloader.stakater.com/match": "true"}}
		}), ""},
		{"recipient cap", account(func(a *v1.SmtpAccount) { a.Spec.Limits = &v1.AccountLimits{MaxRecipients: ptr.To[int32](5000)} }), "spec.limits.maxRecipients"},
		{"apiUser length", account(func(a *v1.SmtpAccount) { a.Spec.APIUser = strings.Repeat("a", 65) }), "spec.apiUser"},
		{"budget zero", account(func(a *v1.SmtpAccount) { a.Spec.BudgetPerMinute = ptr.To[int32](0) }), "spec.budgetPerMinute"},
		{"generated and secretRef", account(func(a *v1.SmtpAccount) {
			a.Spec.Key = v1.AccountKey{Generated: &v1.GeneratedKey{}, SecretRef: &v1.SecretKeyReference{Name: "k"}}
		}), "key: set either generated or secretRef, not both"},
		{"sender domain", account(func(a *v1.SmtpAccount) { a.Spec.AllowedSenderDomains = []string{"not a domain"} }), "spec.allowedSenderDomains[0]"},
		{"missing relayRef", account(func(a *v1.SmtpAccount) { a.Spec.RelayRef = v1.RelayReference{} }), "spec.relayRef.name"},

		{"valid label", label(func(*v1.SmtpLabel) {}), ""},
		{"labelId format", label(func(l *v1.SmtpLabel) { l.Spec.LabelID = "#1" }), "spec.labelId"},
		{"labelId empty", label(func(l *v1.SmtpLabel) { l.Spec.LabelID = "" }), "spec.labelId"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := env.Client.Create(context.Background(), tt.obj, client.DryRunAll)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused a valid resource: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestImmutableFields checks the transition rules on update.
func TestImmutableFields(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, nil)
	a := &v1.SmtpAccount{
		ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: ns},
		Spec:       v1.SmtpAccountSpec{RelayRef: v1.RelayReference{Name: "r"}, APIUser: "acme"},
	}
	if err := env.Client.Create(ctx, a); err != nil {
		t.Fatal(err)
	}
	a.Spec.APIUser = "other"
	if err := env.Client.Update(ctx, a); err == nil || !strings.Contains(err.Error(), "apiUser is immutable") {
		t.Fatalf("changing apiUser: %v", err)
	}
	a.Spec.APIUser = ""
	if err := env.Client.Update(ctx, a); err == nil || !strings.Contains(err.Error(), "apiUser cannot be added or removed") {
		t.Fatalf("removing apiUser: %v", err)
	}
	l := &v1.SmtpLabel{
		ObjectMeta: metav1.ObjectMeta{Name: "l", Namespace: ns},
		Spec:       v1.SmtpLabelSpec{AccountRef: "a", LabelID: "1001"},
	}
	if err := env.Client.Create(ctx, l); err != nil {
		t.Fatal(err)
	}
	l.Spec.LabelID = "1002"
	if err := env.Client.Update(ctx, l); err == nil || !strings.Contains(err.Error(), "labelId is immutable") {
		t.Fatalf("changing labelId: %v", err)
	}
}

func hook(url string) v1.AccountWebhook {
	return v1.AccountWebhook{URL: url, SigningSecretRef: v1.WebhookSecretReference{Name: "hooks"}}
}
