package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SmtpRelaySpec declares a fleet of SMTP relays.
// +kubebuilder:validation:XValidation:rule="!has(self.listeners) || self.listeners.all(l, self.listeners.exists_one(m, m.port == l.port))",message="listeners: ports must be unique"
type SmtpRelaySpec struct {
	// Replicas is the number of relay pods.
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Hostname is the relay's public name: it appears in the SMTP greeting
	// and is the certificate's DNS name.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="hostname must be a lower-case DNS name such as smtp.example.com"
	Hostname string `json:"hostname"`

	// Banner follows "ESMTP" in the greeting.
	// +kubebuilder:default=mailfleet
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[ -~]*$`
	// +optional
	Banner string `json:"banner,omitempty"`

	// Listeners are the ports the relay serves: SMTP ports, and at most one
	// HTTP port for the send API. Default: 25, 587 and 2525 with STARTTLS
	// (587 requires it before AUTH), 465 with implicit TLS, and the HTTP
	// send API on 8443 (named api).
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:XValidation:rule="self.filter(l, has(l.kind) && l.kind == 'HTTP').size() <= 1",message="listeners: at most one listener of kind HTTP (the send API); remove the others"
	// +kubebuilder:validation:XValidation:rule="self.exists(l, !has(l.kind) || l.kind == 'SMTP')",message="listeners: at least one listener of kind SMTP is required; the HTTP send API does not replace SMTP"
	// +listType=map
	// +listMapKey=name
	// +optional
	Listeners []RelayListener `json:"listeners,omitempty"`

	// TLS says where the relay's certificate comes from.
	TLS RelayTLS `json:"tls"`

	// Accounts says which namespaces' SmtpAccounts may use this relay.
	// +optional
	Accounts RelayAccounts `json:"accounts,omitempty"`

	// DefaultBudgetPerMinute is the budget of an account that sets none:
	// recipients per api_user per minute across the whole fleet (a message
	// to five recipients spends five).
	// +kubebuilder:default=30000
	// +kubebuilder:validation:Minimum=1
	// +optional
	DefaultBudgetPerMinute int32 `json:"defaultBudgetPerMinute,omitempty"`

	// Queue is the NATS JetStream that keeps accepted messages until they
	// are delivered. Every pod of the fleet shares it, so a pod can go away
	// (scale-in, eviction, crash) without taking mail with it.
	Queue RelayQueue `json:"queue"`

	// Delivery says where messages go: a smarthost, or (by default) each
	// recipient domain's MX.
	// +optional
	Delivery RelayDelivery `json:"delivery,omitempty"`

	// Suppression tunes the accounts' suppression lists: the addresses
	// whose mail bounced for good (docs/deliverability.md).
	// +optional
	Suppression *RelaySuppression `json:"suppression,omitempty"`

	// SenderDomains says whether accounts must prove their sender domains.
	// +optional
	SenderDomains *RelaySenderDomains `json:"senderDomains,omitempty"`

	// RateLimit counts accounts' budgets across the whole fleet in Redis,
	// through a rate-limit sidecar in every relay pod. Without it, each pod
	// counts on its own and admits 1/replicas of every budget, which holds
	// only while the Service spreads connections evenly.
	// +optional
	RateLimit *RelayRateLimit `json:"rateLimit,omitempty"`

	// Image overrides the relay image (default: the operator's own image).
	// Only images the operator allows (its --relay-allowed-images, the
	// chart's relayAllowedImages) are run; any other stops the relay at
	// Ready=False, reason ImageNotAllowed.
	// +optional
	Image string `json:"image,omitempty"`

	// Resources of the relay container. A CPU or memory request left unset
	// (with no limit for it either) defaults to 100m CPU and 128Mi memory,
	// so the scheduler never places a relay on a node with nothing to spare
	// and the relay is not the first pod evicted under memory pressure. No
	// limit is set by default: a memory limit below what 16 MB messages
	// across many sessions need would kill the relay mid-DATA.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// Service shapes the relay's Service: ClusterIP for clients inside the
	// cluster, LoadBalancer or NodePort for clients outside it.
	// +optional
	Service RelayService `json:"service,omitempty"`

	// DrainGracePeriod is how long a relay pod that is told to stop
	// (rollout, scale-in, node drain) lets open sessions finish. A session
	// between messages is told 421 at its next command at once; one still
	// sending DATA when the period ends is told 421 and gets no 250, so its
	// client keeps the message and retries. The pod's termination grace
	// covers this period. Raise it, up to the 10-minute DATA timeout, for
	// clients that send large messages over slow links; rollouts then take
	// longer. Default 30s.
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('15m')",message="drainGracePeriod must be between 1s and 15m, such as 30s"
	// +optional
	DrainGracePeriod *metav1.Duration `json:"drainGracePeriod,omitempty"`
}

// RelayService is how the relay is exposed.
// +kubebuilder:validation:XValidation:rule="!has(self.externalTrafficPolicy) || self.type != 'ClusterIP'",message="service.externalTrafficPolicy applies to NodePort and LoadBalancer only; set service.type or remove it"
// +kubebuilder:validation:XValidation:rule="self.type == 'LoadBalancer' || (!has(self.loadBalancerClass) && !has(self.loadBalancerSourceRanges))",message="service.loadBalancerClass and service.loadBalancerSourceRanges apply to type LoadBalancer only"
type RelayService struct {
	// Type is ClusterIP (in-cluster clients only), NodePort, or
	// LoadBalancer (a cloud load balancer in front of the relays).
	// +kubebuilder:validation:Enum=ClusterIP;NodePort;LoadBalancer
	// +kubebuilder:default=ClusterIP
	// +optional
	Type corev1.ServiceType `json:"type,omitempty"`

	// ExternalTrafficPolicy for NodePort and LoadBalancer. Local (the
	// default) keeps each client's own address, which the relay's per-address
	// limits and Received header depend on; the load balancer sends only to
	// nodes that run a relay. Cluster spreads over every node but shows
	// every client as a node's address, so one busy client can lock out all.
	// +kubebuilder:validation:Enum=Local;Cluster
	// +optional
	ExternalTrafficPolicy corev1.ServiceExternalTrafficPolicy `json:"externalTrafficPolicy,omitempty"`

	// Annotations for the Service, read by cloud load balancer controllers
	// (for example service.beta.kubernetes.io/aws-load-balancer-type: nlb)
	// and external-dns.
	// +kubebuilder:validation:MaxProperties=32
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`

	// LoadBalancerClass picks the load balancer implementation.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	LoadBalancerClass *string `json:"loadBalancerClass,omitempty"`

	// LoadBalancerSourceRanges limits which client networks the load
	// balancer admits, as CIDRs.
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=43
	// +kubebuilder:validation:XValidation:rule="self.all(c, isCIDR(c))",message="service.loadBalancerSourceRanges must be CIDRs such as 203.0.113.0/24"
	// +optional
	LoadBalancerSourceRanges []string `json:"loadBalancerSourceRanges,omitempty"`
}

// RelayListener is one port: SMTP, or the HTTP send API.
// +kubebuilder:validation:XValidation:rule="has(self.proxyProtocol) && self.proxyProtocol ? has(self.trustedProxies) && size(self.trustedProxies) > 0 : !has(self.trustedProxies) || size(self.trustedProxies) == 0",message="listeners: proxyProtocol needs trustedProxies (the load balancers' CIDRs), and trustedProxies needs proxyProtocol: true"
// +kubebuilder:validation:XValidation:rule="!has(self.kind) || self.kind != 'HTTP' || (!has(self.authRequiresTLS) && (!has(self.tls) || self.tls == 'StartTLS'))",message="listeners: a listener of kind HTTP always serves HTTPS with the relay's certificate; remove its tls and authRequiresTLS"
type RelayListener struct {
	// Name labels the port (Service port name, metrics).
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]{0,13}[a-z0-9])?$`
	Name string `json:"name"`
	// Kind is SMTP (the default) or HTTP: the send API (POST
	// /v1/mail/send) over HTTPS with the relay's certificate, on the same
	// accounts, keys, budget and queue as SMTP. Its usual port is 8443.
	// +kubebuilder:validation:Enum=SMTP;HTTP
	// +kubebuilder:default=SMTP
	// +optional
	Kind ListenerKind `json:"kind,omitempty"`
	// Port is the container and Service port.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
	// TLS is StartTLS (offered after EHLO) or Implicit (TLS from the first
	// byte, as on 465); SMTP listeners only.
	// +kubebuilder:validation:Enum=StartTLS;Implicit
	// +kubebuilder:default=StartTLS
	// +optional
	TLS ListenerTLS `json:"tls,omitempty"`
	// AuthRequiresTLS neither offers nor accepts AUTH until the session is
	// encrypted (530 5.7.0 before STARTTLS), as Postfix's
	// smtpd_tls_auth_only. Default true; set false only for old clients on
	// a network you trust, since their keys then cross it in clear.
	// +optional
	AuthRequiresTLS *bool `json:"authRequiresTLS,omitempty"`
	// ProxyProtocol expects an HAProxy PROXY protocol header (v1 or v2) at
	// the start of every connection, sent by a load balancer in
	// TrustedProxies, and uses the client address it names for throttles,
	// logs and the Received header (SMTP and HTTP listeners alike: a load
	// balancer that sends it for one port of a Service usually sends it
	// for all). A connection from anywhere else, or
	// without a header, is closed. Turn it on only together with the load
	// balancer's own setting (for example the
	// service.beta.kubernetes.io/aws-load-balancer-proxy-protocol annotation
	// in spec.service.annotations).
	// +optional
	ProxyProtocol bool `json:"proxyProtocol,omitempty"`
	// TrustedProxies are the load balancers' source ranges (CIDRs) that may
	// send a PROXY header; required with proxyProtocol.
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=43
	// +kubebuilder:validation:XValidation:rule="self.all(c, isCIDR(c))",message="trustedProxies: each entry must be a CIDR such as 10.0.0.0/8"
	// +optional
	TrustedProxies []string `json:"trustedProxies,omitempty"`
}

// ListenerKind is what a listener serves.
type ListenerKind string

// Listener kinds.
const (
	ListenerSMTP ListenerKind = "SMTP"
	ListenerHTTP ListenerKind = "HTTP"
)

// IsHTTP reports whether the listener is the HTTP send API's.
func (l RelayListener) IsHTTP() bool { return l.Kind == ListenerHTTP }

// ListenerTLS is how a listener starts TLS.
type ListenerTLS string

// Listener TLS modes.
const (
	ListenerStartTLS ListenerTLS = "StartTLS"
	ListenerImplicit ListenerTLS = "Implicit"
)

// RelayTLS names a cert-manager issuer, or an existing TLS Secret.
// +kubebuilder:validation:XValidation:rule="has(self.issuerRef) != has(self.secretName)",message="tls: set exactly one of issuerRef (cert-manager issues the certificate) or secretName (an existing kubernetes.io/tls Secret)"
type RelayTLS struct {
	// IssuerRef is the cert-manager Issuer or ClusterIssuer that signs the
	// relay's certificate.
	// +optional
	IssuerRef *IssuerReference `json:"issuerRef,omitempty"`
	// SecretName is an existing kubernetes.io/tls Secret in the relay's namespace.
	// +kubebuilder:validation:MinLength=1
	// +optional
	SecretName string `json:"secretName,omitempty"`
}

// IssuerReference names a cert-manager issuer.
type IssuerReference struct {
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// Kind is Issuer (in the relay's namespace) or ClusterIssuer.
	// +kubebuilder:validation:Enum=Issuer;ClusterIssuer
	// +kubebuilder:default=Issuer
	// +optional
	Kind string `json:"kind,omitempty"`
	// Group is the issuer's API group.
	// +kubebuilder:default=cert-manager.io
	// +optional
	Group string `json:"group,omitempty"`
}

// RelayQueue is the relay's queue.
type RelayQueue struct {
	// NATS is an external JetStream cluster, such as the chart's
	// (nats.enabled) or your own. Its servers must run with
	// sync_interval: always, or an acknowledged message can be lost when
	// a node loses power.
	NATS NATSQueue `json:"nats"`
}

// NATSQueue locates a JetStream and the stream the relay uses.
// +kubebuilder:validation:XValidation:rule="!(has(self.credentialsSecretRef) && has(self.authSecretRef))",message="queue.nats: set credentialsSecretRef or authSecretRef, not both"
type NATSQueue struct {
	// URL is one or more comma-separated nats:// or tls:// server URLs.
	// +kubebuilder:validation:MaxLength=1024
	// A user and password in the URL are refused: the URL is written into
	// the relay's ConfigMap, which is not a Secret.
	// +kubebuilder:validation:XValidation:rule="self.matches('^(nats|tls)://[^,/ @]+(,(nats|tls)://[^,/ @]+)*$')",message="queue.nats.url must be nats://host:port or tls://host:port, comma-separated for several servers, without a user or password (put those in authSecretRef or credentialsSecretRef)"
	URL string `json:"url"`
	// CredentialsSecretRef names a NATS .creds file (JWT and NKey seed) in a
	// Secret in the relay's namespace.
	// +optional
	CredentialsSecretRef *SecretKeySelector `json:"credentialsSecretRef,omitempty"`
	// AuthSecretRef names a Secret in the relay's namespace with the keys
	// username and password, to log in with a user and password instead.
	// +optional
	AuthSecretRef *LocalSecretReference `json:"authSecretRef,omitempty"`
	// CASecretRef names the CA bundle that signs the servers' certificates.
	// +optional
	CASecretRef *SecretKeySelector `json:"caSecretRef,omitempty"`
	// Stream names the queue stream; the relay creates it when missing.
	// Default: MAILFLEET_<NAMESPACE>_<NAME> (upper case, "." in the name
	// as "_"), distinct for every relay, so relays sharing a JetStream never
	// deliver each other's mail. A stream another SmtpRelay already uses is
	// refused (Ready=False, reason StreamConflict).
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9_-]+$`
	// +optional
	Stream string `json:"stream,omitempty"`
	// Replicas of the stream: 3 survives the loss of one JetStream node.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=5
	// +kubebuilder:default=3
	// +optional
	Replicas int32 `json:"replicas,omitempty"`
}

// Sender domain verification policies.
const (
	// SenderVerificationRequired: an account sends only from the domains
	// of Verified SmtpDomains of its namespace (those its
	// allowedSenderDomains name, or all of them when it names none).
	SenderVerificationRequired = "Required"
	// SenderVerificationOptional: an account sends from the domains its
	// allowedSenderDomains name (any, when none), verified or not; it
	// signs only for verified ones.
	SenderVerificationOptional = "Optional"
)

// RelaySenderDomains is the relay's rule for sender domains.
type RelaySenderDomains struct {
	// Verification is Required (the default: an account sends only from
	// domains whose SmtpDomain is Verified, so a tenant cannot send as a
	// domain it does not control) or Optional (allowedSenderDomains is
	// taken as written, as before SmtpDomain existed).
	// +kubebuilder:validation:Enum=Required;Optional
	// +optional
	Verification string `json:"verification,omitempty"`
}

// RelaySuppression tunes the accounts' suppression lists.
type RelaySuppression struct {
	// OnSubmission is what a recipient on the account's list gets at
	// submission: Refuse (the default) answers its RCPT TO with 550 5.1.1;
	// Drop accepts it and sends it nothing, as a mailbox provider's
	// suppression does. Either way the account's webhooks get a
	// suppressed event.
	// +kubebuilder:validation:Enum=Refuse;Drop
	// +optional
	OnSubmission string `json:"onSubmission,omitempty"`
	// BounceTTL is how long a hard bounce suppresses its address
	// (default 720h, 30 days).
	// +optional
	BounceTTL *metav1.Duration `json:"bounceTTL,omitempty"`
}

// RelayDelivery is how queued messages leave the relay.
type RelayDelivery struct {
	// Smarthost hands every message to one server. Without it, the relay
	// delivers to each recipient domain's MX on port 25.
	// +optional
	Smarthost *Smarthost `json:"smarthost,omitempty"`
	// Workers is how many messages each pod holds for delivery at once;
	// at most perDomain (20) of them go to one recipient domain at a time,
	// and the others wait for a slot with their message already in hand.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	// +kubebuilder:default=64
	// +optional
	Workers int32 `json:"workers,omitempty"`
	// Retry is the schedule of temporary failures.
	// +optional
	Retry RetrySchedule `json:"retry,omitempty"`
	// LabelHeader names the header that tells the next hop the account and
	// label; any header of that name the client sent is removed.
	// +kubebuilder:validation:Pattern=`^[!-9;-~]+$`
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:default=X-Mailfleet-Label
	// +optional
	LabelHeader string `json:"labelHeader,omitempty"`
	// AllowedDestinations are special-purpose networks (private, loopback,
	// link-local, shared address space, ...) that direct MX delivery may
	// reach anyway, such as an internal mail host. By default a recipient
	// domain whose MX resolves only there bounces: anyone who may send could
	// otherwise make the relay connect to the cluster's own services.
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=43
	// +kubebuilder:validation:XValidation:rule="self.all(c, isCIDR(c))",message="delivery.allowedDestinations must be CIDRs such as 10.20.0.0/16"
	// +optional
	AllowedDestinations []string `json:"allowedDestinations,omitempty"`
	// AllowAddressLiterals delivers directly to recipients such as
	// user@[192.0.2.1] (still only to allowed destinations); by default
	// they bounce.
	// +optional
	AllowAddressLiterals bool `json:"allowAddressLiterals,omitempty"`
	// MTASTS is whether direct delivery honours the destinations' MTA-STS
	// policies (RFC 8461): Honour (the default) sends mail for a domain
	// whose policy is in enforce mode only to the MX hosts it names, over
	// TLS verified for them, and defers it otherwise; Ignore does not
	// look policies up. Not used with a smarthost.
	// +kubebuilder:validation:Enum=Honour;Ignore
	// +optional
	MTASTS string `json:"mtaSTS,omitempty"`
	// Destinations tune direct delivery to groups of recipient domains:
	// their TLS (ahead of their MTA-STS policy), and fleet-wide bounds on
	// sessions and messages per minute. The large providers have groups by
	// default (google, microsoft, yahoo, apple; docs/deliverability.md);
	// an entry of the same name replaces one.
	// +kubebuilder:validation:MaxItems=200
	// +listType=map
	// +listMapKey=name
	// +optional
	Destinations []RelayDestination `json:"destinations,omitempty"`
}

// RelayDestination is how mail to a group of recipient domains is
// delivered.
// +kubebuilder:validation:XValidation:rule="has(self.domains) || has(self.mxHosts)",message="a destination needs domains, mxHosts or both"
type RelayDestination struct {
	// Name names the group in metrics and in the counts the relays share.
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`
	// Domains are recipient domains, each with its subdomains.
	// +kubebuilder:validation:MaxItems=100
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+$`
	// +listType=set
	// +optional
	Domains []string `json:"domains,omitempty"`
	// MXHosts take in every recipient domain whose MX hosts are these or
	// under them (google.com takes in the domains Google hosts).
	// +kubebuilder:validation:MaxItems=20
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+$`
	// +listType=set
	// +optional
	MXHosts []string `json:"mxHosts,omitempty"`
	// TLS is Opportunistic (the default: STARTTLS when offered, any
	// certificate, plain text otherwise), Required (never plain text, any
	// certificate, as Postfix's "encrypt") or Verify (never plain text,
	// and a certificate that verifies for the MX host's name).
	// +kubebuilder:validation:Enum=Opportunistic;Required;Verify
	// +optional
	TLS string `json:"tls,omitempty"`
	// MaxConnections bounds the sessions the whole fleet has open to the
	// group at once. Unset: only each pod's 20 per domain.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	MaxConnections *int32 `json:"maxConnections,omitempty"`
	// MaxMessagesPerMinute bounds the messages the whole fleet sends the
	// group per minute; beyond it deliveries wait for the queue's next
	// retry.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	// +optional
	MaxMessagesPerMinute *int32 `json:"maxMessagesPerMinute,omitempty"`
	// MaxMessagesPerConnection is how many messages one session to the
	// group carries before it is closed. Above 1, a session waits up to
	// 2 s for the next message to the same MX host (RSET between), still
	// holding its place under maxConnections. Unset: one message per
	// session, except for the built-in groups (google 100, microsoft,
	// yahoo and apple 20).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	MaxMessagesPerConnection *int32 `json:"maxMessagesPerConnection,omitempty"`
}

// Smarthost is the server every message is handed to.
type Smarthost struct {
	// Host is its DNS name or IP address.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Host string `json:"host"`
	// Port defaults to 465 with TLS Implicit, else 587.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Port int32 `json:"port,omitempty"`
	// TLS is Required (STARTTLS with a verified certificate, else the
	// message waits), Opportunistic (STARTTLS when offered, unverified),
	// Implicit (TLS from the first byte, as on 465) or None.
	// +kubebuilder:validation:Enum=Required;Opportunistic;Implicit;None
	// +kubebuilder:default=Required
	// +optional
	TLS SmarthostTLS `json:"tls,omitempty"`
	// AuthSecretRef names a Secret in the relay's namespace with the keys
	// username and password, for AUTH.
	// +optional
	AuthSecretRef *LocalSecretReference `json:"authSecretRef,omitempty"`
	// CASecretRef names the CA bundle that signs the smarthost's certificate
	// (default: the system's roots).
	// +optional
	CASecretRef *SecretKeySelector `json:"caSecretRef,omitempty"`
}

// SmarthostTLS is how the relay protects its session with the smarthost.
type SmarthostTLS string

// Smarthost TLS modes.
const (
	SmarthostTLSRequired      SmarthostTLS = "Required"
	SmarthostTLSOpportunistic SmarthostTLS = "Opportunistic"
	SmarthostTLSImplicit      SmarthostTLS = "Implicit"
	SmarthostTLSNone          SmarthostTLS = "None"
)

// LocalSecretReference names a Secret in the same namespace.
type LocalSecretReference struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// RetrySchedule is when temporary failures are tried again: MinBackoff
// doubling up to MaxBackoff, until the message is MaxAge old and bounces.
// The defaults are Postfix's.
// +kubebuilder:validation:XValidation:rule="!has(self.minBackoff) || !has(self.maxBackoff) || duration(self.minBackoff) <= duration(self.maxBackoff)",message="retry.minBackoff must not exceed retry.maxBackoff"
type RetrySchedule struct {
	// MinBackoff is the first delay (default 5m).
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s')",message="retry.minBackoff must be at least 1s"
	// +optional
	MinBackoff *metav1.Duration `json:"minBackoff,omitempty"`
	// MaxBackoff caps the delay (default 4000s).
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s')",message="retry.maxBackoff must be at least 1s"
	// +optional
	MaxBackoff *metav1.Duration `json:"maxBackoff,omitempty"`
	// MaxAge is how long a message is retried before it bounces (default 120h).
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="retry.maxAge must be at least 1m"
	// +optional
	MaxAge *metav1.Duration `json:"maxAge,omitempty"`
}

// RelayRateLimit configures the rate-limit sidecar (mailfleet ratelimit)
// that every relay pod asks before it accepts a message.
type RelayRateLimit struct {
	// Redis holds the counters, one key per api_user per minute.
	Redis RedisEndpoint `json:"redis"`
	// FailureMode is what the sidecar answers while Redis fails or misses
	// the deadline: Allow admits up to each pod's share of the budget
	// (budget/replicas), Deny refuses with 451 4.7.1 (try again later).
	// +kubebuilder:validation:Enum=Allow;Deny
	// +kubebuilder:default=Allow
	// +optional
	FailureMode RateLimitFailureMode `json:"failureMode,omitempty"`
	// Deadline bounds one decision in Redis before the failure mode applies.
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1ms') && duration(self) <= duration('1s')",message="rateLimit.deadline must be between 1ms and 1s, such as 50ms"
	// +optional
	Deadline *metav1.Duration `json:"deadline,omitempty"`
	// Resources of the sidecar container.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
}

// RateLimitFailureMode is the sidecar's policy while Redis is unavailable.
type RateLimitFailureMode string

// Failure modes.
const (
	RateLimitFailureAllow RateLimitFailureMode = "Allow"
	RateLimitFailureDeny  RateLimitFailureMode = "Deny"
)

// RedisEndpoint is how the sidecar reaches Redis.
type RedisEndpoint struct {
	// Address is host:port, such as redis.mailfleet-system.svc:6379.
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=261
	// +kubebuilder:validation:XValidation:rule="self.matches('^[^:/ ]+:[0-9]{1,5}$')",message="redis.address must be host:port, such as redis.mailfleet-system.svc:6379"
	Address string `json:"address"`
	// Username is the Redis ACL user (Redis 6 and later).
	// +kubebuilder:validation:MaxLength=128
	// +optional
	Username string `json:"username,omitempty"`
	// PasswordSecretRef names a key of a Secret in the relay's namespace that
	// holds the password.
	// +optional
	PasswordSecretRef *SecretKeySelector `json:"passwordSecretRef,omitempty"`
	// TLS connects over TLS.
	// +optional
	TLS *RedisTLS `json:"tls,omitempty"`
}

// RedisTLS is TLS towards Redis.
type RedisTLS struct {
	// CASecretRef names a key of a Secret in the relay's namespace holding
	// the CA bundle that signs Redis's certificate; without it the system's
	// roots are used.
	// +optional
	CASecretRef *SecretKeySelector `json:"caSecretRef,omitempty"`
}

// SecretKeySelector names one key of a Secret in the same namespace.
type SecretKeySelector struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// Key in the Secret's data.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key"`
}

// RelayAccounts restricts where accounts may attach from, as Gateway API's
// allowedRoutes does.
type RelayAccounts struct {
	// +optional
	Namespaces AccountNamespaces `json:"namespaces,omitempty"`
}

// AccountNamespaces selects namespaces.
// +kubebuilder:validation:XValidation:rule="self.from == 'Selector' ? has(self.selector) : !has(self.selector)",message="namespaces.selector is required when from is Selector, and only then"
type AccountNamespaces struct {
	// From is Same (the relay's namespace), All, or Selector.
	// +kubebuilder:validation:Enum=Same;All;Selector
	// +kubebuilder:default=Same
	// +optional
	From NamespacesFrom `json:"from,omitempty"`
	// Selector picks namespaces by label when From is Selector.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`
}

// NamespacesFrom says which namespaces may attach accounts.
type NamespacesFrom string

// Namespace policies.
const (
	NamespacesFromSame     NamespacesFrom = "Same"
	NamespacesFromAll      NamespacesFrom = "All"
	NamespacesFromSelector NamespacesFrom = "Selector"
)

// SmtpRelayStatus is what the operator observed.
type SmtpRelayStatus struct {
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// Replicas is how many relay pods exist (the Deployment's count).
	// +optional
	Replicas int32 `json:"replicas,omitempty"`
	// ReadyReplicas of the relay Deployment.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`
	// Selector selects the relay's pods, for the scale subresource: a
	// HorizontalPodAutoscaler targets the SmtpRelay and reads pod metrics
	// through it.
	// +optional
	Selector string `json:"selector,omitempty"`
	// Endpoint is the in-cluster DNS name of the relay Service.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// Accounts is how many accounts are attached and usable.
	// +optional
	Accounts int32 `json:"accounts,omitempty"`
	// Stream is the JetStream stream the relay's pods use. The operator
	// keeps it once chosen, while spec.queue.nats.stream is unset, so a
	// change in the default naming never strands queued mail in a stream
	// no pod reads.
	// +optional
	Stream string `json:"stream,omitempty"`
}

// SmtpRelay is a fleet of authenticated SMTP relays.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.replicas,statuspath=.status.replicas,selectorpath=.status.selector
// +kubebuilder:resource:categories=mailfleet
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Replicas",type=integer,JSONPath=`.status.readyReplicas`
// +kubebuilder:printcolumn:name="Hostname",type=string,JSONPath=`.spec.hostname`
// +kubebuilder:printcolumn:name="Accounts",type=integer,JSONPath=`.status.accounts`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SmtpRelay struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   SmtpRelaySpec   `json:"spec,omitempty"`
	Status SmtpRelayStatus `json:"status,omitempty"`
}

// SmtpRelayList is a list of SmtpRelay.
// +kubebuilder:object:root=true
type SmtpRelayList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SmtpRelay `json:"items"`
}

func init() {
	SchemeBuilder.Register(&SmtpRelay{}, &SmtpRelayList{})
}
