// Package config is the relay's configuration file: what `mailfleet relay
// --config` reads and what the operator renders into a ConfigMap.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Config is the relay's configuration.
type Config struct {
	// Hostname is the name in the greeting, EHLO and QUIT replies.
	Hostname string `json:"hostname,omitempty"`
	// Banner follows "ESMTP" in the greeting.
	Banner string `json:"banner,omitempty"`
	// Node names this process in queue ids (the pod name); defaults to the host name.
	Node      string     `json:"node,omitempty"`
	Listeners []Listener `json:"listeners,omitempty"`
	// HTTPAPI is the HTTP send API's listener (relay/httpapi); off when
	// unset.
	HTTPAPI *HTTPAPI `json:"httpAPI,omitempty"`
	TLS     *TLS     `json:"tls,omitempty"`
	// CredentialsFile holds accounts and labels (see relay/credentials).
	// Exactly one of CredentialsFile and CredentialsSecrets is set.
	CredentialsFile string `json:"credentialsFile,omitempty"`
	// CredentialsSecrets reads the shards the operator publishes for this
	// relay from the API server, in the relay's own namespace.
	CredentialsSecrets *CredentialsSecrets `json:"credentialsSecrets,omitempty"`
	// SpoolDir is the relay's data directory: the embedded queue's file
	// store lives there unless queue.embedded.dir says otherwise. Not
	// needed with queue.nats.
	SpoolDir string `json:"spoolDir,omitempty"`
	// Queue says where accepted messages wait for delivery (default: the
	// embedded JetStream under spoolDir).
	Queue Queue `json:"queue,omitempty"`
	// Delivery configures the delivery workers and where they deliver.
	Delivery Delivery `json:"delivery,omitempty"`
	// Events configures the delivery events stream (relay/events).
	Events Events `json:"events,omitempty"`
	// Webhooks configures the posting of events to the accounts' webhooks.
	Webhooks Webhooks `json:"webhooks,omitempty"`
	// Suppression configures the accounts' suppression lists.
	Suppression Suppression `json:"suppression,omitempty"`
	// MetricsAddress serves /healthz and /readyz in clear, for kubelet's
	// probes, and /metrics too unless metrics.address moves it.
	MetricsAddress string `json:"metricsAddress,omitempty"`
	// Metrics protects /metrics: an address of its own, TLS, a bearer token.
	Metrics *Metrics `json:"metrics,omitempty"`
	// DrainGracePeriod is how long open sessions may go on after SIGTERM.
	DrainGracePeriod Duration `json:"drainGracePeriod,omitempty"`
	Limits           Limits   `json:"limits,omitempty"`
	// Budget says where accounts' budgets are counted.
	Budget Budget `json:"budget,omitempty"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"logLevel,omitempty"`
}

// Listener is one SMTP port.
type Listener struct {
	Name        string `json:"name"`
	Address     string `json:"address"`
	ImplicitTLS bool   `json:"implicitTLS,omitempty"`
	// AuthRequiresTLS, true when unset, neither offers nor accepts AUTH
	// before the session is encrypted. false lets keys cross the network in
	// clear, for old clients on a network you trust.
	AuthRequiresTLS *bool `json:"authRequiresTLS,omitempty"`
	Proxy
}

// Proxy is a listener's PROXY protocol setting.
type Proxy struct {
	// ProxyProtocol expects a PROXY protocol header (v1 or v2) at the start
	// of every connection, from a peer in TrustedProxies, and takes the
	// client's address from it; other connections are closed. For a load
	// balancer that terminates TCP and would otherwise show every client as
	// itself. Without it a header is never parsed.
	ProxyProtocol bool `json:"proxyProtocol,omitempty"`
	// TrustedProxies are the load balancers' source ranges (CIDRs), required
	// with proxyProtocol.
	TrustedProxies []string `json:"trustedProxies,omitempty"`
}

// HTTPAPI is the HTTP send API's listener: HTTPS with the relay's tls
// files, the same accounts, budget and queue as SMTP.
type HTTPAPI struct {
	Enabled bool `json:"enabled"`
	// Address defaults to DefaultHTTPAPIAddress.
	Address string `json:"address,omitempty"`
	Proxy
}

// DefaultHTTPAPIAddress is the API's port in a relay pod.
const DefaultHTTPAPIAddress = ":8443"

// Serves reports whether the API is on.
func (h *HTTPAPI) Serves() bool { return h != nil && h.Enabled }

// AuthNeedsTLS reports whether the listener refuses AUTH before TLS.
func (l Listener) AuthNeedsTLS() bool { return l.AuthRequiresTLS == nil || *l.AuthRequiresTLS }

// TrustedProxyPrefixes parses TrustedProxies.
func (l Proxy) TrustedProxyPrefixes() ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(l.TrustedProxies))
	for i, s := range l.TrustedProxies {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("trustedProxies[%d] %q: want a CIDR such as 10.0.0.0/8 or 192.0.2.10/32", i, s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func (l Proxy) validateProxy() error {
	switch {
	case l.ProxyProtocol && len(l.TrustedProxies) == 0:
		return errors.New("proxyProtocol needs trustedProxies: the load balancers' source ranges")
	case !l.ProxyProtocol && len(l.TrustedProxies) > 0:
		return errors.New("trustedProxies is only read with proxyProtocol: true")
	}
	_, err := l.TrustedProxyPrefixes()
	return err
}

// Metrics says where and how /metrics is served. Queue depth, accounts'
// traffic and certificate expiry are for the platform team, not for
// whoever reaches the pod.
type Metrics struct {
	// Address serves /metrics alone; empty (or metricsAddress) serves it
	// beside the probes.
	Address string `json:"address,omitempty"`
	// TLS serves Address over TLS 1.2 or newer: with certFile and keyFile
	// that pair, with neither ({}) the relay's tls files. Reloaded when the
	// files change. It needs an address of its own, so that the probes stay
	// in clear.
	TLS *TLS `json:"tls,omitempty"`
	// BearerTokenFile holds the token a scrape must send (Authorization:
	// Bearer <token>); read at each scrape, so a rotated Secret takes
	// effect at once. Without TLS the token crosses the network in clear.
	BearerTokenFile string `json:"bearerTokenFile,omitempty"`
}

// SeparateAddress reports whether /metrics has a listener of its own.
func (m *Metrics) SeparateAddress(metricsAddress string) bool {
	return m != nil && m.Address != "" && m.Address != metricsAddress
}

// CredentialsSecrets names the relay whose credentials shards to watch.
type CredentialsSecrets struct {
	Namespace string `json:"namespace"`
	Relay     string `json:"relay"`
}

// TLS names the certificate files; they are reloaded when they change.
type TLS struct {
	CertFile string `json:"certFile"`
	KeyFile  string `json:"keyFile"`
}

// Limits bound what one client may do; zero means the relay's default.
type Limits struct {
	MaxMessageBytes int64 `json:"maxMessageBytes,omitempty"`
	MaxRecipients   int   `json:"maxRecipients,omitempty"`
	MaxLineLength   int   `json:"maxLineLength,omitempty"`
	MaxConnections  int   `json:"maxConnections,omitempty"`
	// MaxConnectionsPerClient caps one client address's open sessions
	// (default 50); ConnectionRatePerClient its new connections per minute
	// (default 0: no cap). -1 turns a cap off.
	MaxConnectionsPerClient int      `json:"maxConnectionsPerClient,omitempty"`
	ConnectionRatePerClient int      `json:"connectionRatePerClient,omitempty"`
	CommandTimeout          Duration `json:"commandTimeout,omitempty"`
	DataTimeout             Duration `json:"dataTimeout,omitempty"`
	AuthFailureLimit        int      `json:"authFailureLimit,omitempty"`
	AuthFailureWindow       Duration `json:"authFailureWindow,omitempty"`
}

// Budget says where accounts' budgets are counted. Without a sidecar the
// relay counts in-process, which holds for one relay process only (dev mode,
// a single relay); a fleet asks the rate-limit sidecar in its pod.
type Budget struct {
	Sidecar *BudgetSidecar `json:"sidecar,omitempty"`
	// PodShare, without a sidecar, divides every budget among this many
	// relay processes that each count on their own (see budget.PodShare).
	PodShare int `json:"podShare,omitempty"`
}

// BudgetSidecar is the rate-limit sidecar (mailfleet ratelimit) on loopback.
type BudgetSidecar struct {
	// Address is its gRPC address (default 127.0.0.1:8081).
	Address string `json:"address,omitempty"`
	// Timeout bounds one decision that asks the sidecar; past it the
	// message gets 451 4.7.1 (default 100ms: twice the sidecar's Redis
	// deadline, so the sidecar's own failure mode answers first).
	Timeout Duration `json:"timeout,omitempty"`
	// Leases (default true) decides messages in the relay from blocks of
	// each account's budget leased from the sidecar (budget.Leased), so a
	// message asks the sidecar only when the relay's lease runs out.
	// false asks the sidecar once per message (budget.Sidecar).
	Leases *bool `json:"leases,omitempty"`
	// LeaseLife is how long a lease should last at an account's rate on
	// this relay (default 1s): longer means fewer calls to the sidecar and
	// more of a budget held by one relay near the budget's edge.
	LeaseLife Duration `json:"leaseLife,omitempty"`
	// IdleReturn is how long after an account's last message the relay
	// gives back what it holds of that account, but for one message's
	// worth (default 2s).
	IdleReturn Duration `json:"idleReturn,omitempty"`
}

// UsesLeases says whether the relay decides from leases (the default).
func (s BudgetSidecar) UsesLeases() bool { return s.Leases == nil || *s.Leases }

// Queue is the durable queue on NATS JetStream: embedded in the relay
// process (dev, a single node) or an external cluster (a fleet). At most
// one of Embedded and NATS is set; with neither, the queue is embedded.
type Queue struct {
	Embedded *EmbeddedQueue `json:"embedded,omitempty"`
	NATS     *NATSQueue     `json:"nats,omitempty"`
	// AckWait is how long a delivery may go silent before its message is
	// handed to another worker (default 1m); workers report progress at a
	// third of it.
	AckWait Duration `json:"ackWait,omitempty"`
}

// EmbeddedQueue runs nats-server inside the relay with its file store in
// Dir (default spoolDir), synced before every acknowledgement.
type EmbeddedQueue struct {
	Dir string `json:"dir,omitempty"`
}

// NATSQueue is an external JetStream. Its servers must sync before they
// acknowledge (sync_interval: always), or run replicated streams.
type NATSQueue struct {
	// URL lists the servers: nats://host:4222, or tls:// for TLS.
	URL string `json:"url"`
	// CredentialsFile is a NATS .creds file (JWT and NKey seed).
	CredentialsFile string `json:"credentialsFile,omitempty"`
	// UserFile and PasswordFile hold a user name and password, each file
	// its value (as a mounted Secret provides them).
	UserFile     string `json:"userFile,omitempty"`
	PasswordFile string `json:"passwordFile,omitempty"`
	// CAFile holds the authorities that sign the servers' certificates.
	CAFile string `json:"caFile,omitempty"`
	// Stream names the queue stream (default MAILFLEET).
	Stream string `json:"stream,omitempty"`
	// Replicas of the streams the relay creates (default 3).
	Replicas int `json:"replicas,omitempty"`
}

// Delivery configures the delivery workers. The transport is the smarthost
// when one is set, else a local directory when set (dev), else each
// recipient domain's MX hosts.
type Delivery struct {
	// Workers is how many messages each relay process holds for delivery
	// at once (default 64); PerDomain bounds those going to one domain.
	Workers int `json:"workers,omitempty"`
	// PerDomain bounds deliveries to one recipient domain at once, per
	// relay process (default 20).
	PerDomain int `json:"perDomain,omitempty"`
	// Backoff is the retry schedule of temporary failures.
	Backoff Backoff `json:"backoff,omitempty"`
	// Expiry is how long a message is retried before it bounces (default
	// 120h, Postfix's maximal_queue_lifetime).
	Expiry Duration `json:"expiry,omitempty"`
	// LabelHeader names the header that carries the account and label to
	// the next hop (default X-Mailfleet-Label); a value the client sent in
	// it is removed.
	LabelHeader string `json:"labelHeader,omitempty"`
	// Smarthost hands every message to one server.
	Smarthost *Smarthost `json:"smarthost,omitempty"`
	// LocalDir writes every message as an .eml file there (dev mode).
	LocalDir string `json:"localDir,omitempty"`
	// AllowedDestinations are special-purpose networks (CIDRs: private,
	// loopback, link-local, ...) that direct MX delivery may reach anyway;
	// by default it reaches public addresses only.
	AllowedDestinations []string `json:"allowedDestinations,omitempty"`
	// AllowAddressLiterals delivers directly to recipients such as
	// user@[192.0.2.1]; by default they bounce.
	AllowAddressLiterals bool `json:"allowAddressLiterals,omitempty"`
	// IgnoreMTASTS leaves the destinations' MTA-STS policies unread; by
	// default direct delivery honours them.
	IgnoreMTASTS bool `json:"ignoreMtaSts,omitempty"`
	// Destinations tune direct delivery to groups of recipient domains;
	// one named like a default group (google, microsoft, yahoo, apple)
	// replaces it.
	Destinations []Destination `json:"destinations,omitempty"`
}

// Destination is a group of recipient domains: those listed (with their
// subdomains) and those whose MX hosts are under MXHosts.
type Destination struct {
	Name    string   `json:"name"`
	Domains []string `json:"domains,omitempty"`
	MXHosts []string `json:"mxHosts,omitempty"`
	// TLS is "" (opportunistic), "encrypt" (never plain text) or
	// "required" (never plain text, the certificate verified).
	TLS string `json:"tls,omitempty"`
	// MaxConnections and MaxPerMinute bound the whole fleet's sessions to
	// the group and its messages per minute; 0 is no bound.
	MaxConnections int `json:"maxConnections,omitempty"`
	MaxPerMinute   int `json:"maxPerMinute,omitempty"`
	// MaxMessagesPerConnection is how many messages one session to the
	// group carries; above 1 a session is kept open for the next.
	MaxMessagesPerConnection int `json:"maxMessagesPerConnection,omitempty"`
}

// DestinationPrefixes parses AllowedDestinations.
func (d Delivery) DestinationPrefixes() ([]netip.Prefix, error) {
	return parsePrefixes("delivery.allowedDestinations", d.AllowedDestinations)
}

func parsePrefixes(field string, list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for i, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s[%d] %q: want a CIDR such as 10.20.0.0/16", field, i, s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Events tunes the delivery events stream, made beside the queue's.
type Events struct {
	// MaxAge is how long the stream keeps an event (default 168h).
	MaxAge Duration `json:"maxAge,omitempty"`
	// MaxBytes bounds the stream (default 256 MiB); past it the oldest events
	// go first, so that events never take the queue's storage.
	MaxBytes int64 `json:"maxBytes,omitempty"`
	// Buffer bounds the events a relay holds in memory while the stream
	// cannot take them (default 100000); past it they are dropped, counted.
	Buffer int `json:"buffer,omitempty"`
}

// Suppression tunes the suppression lists (relay/suppression): a
// recipient whose mail bounced for good is refused (550 5.1.1) and left
// out of queued messages until its entry expires.
type Suppression struct {
	// Disabled keeps no list: every recipient is sent to, whatever
	// bounced before.
	Disabled bool `json:"disabled,omitempty"`
	// BounceTTL is how long a hard bounce suppresses its address
	// (default 720h, 30 days).
	BounceTTL Duration `json:"bounceTTL,omitempty"`
	// OnSubmission is Refuse (the default: 550 5.1.1 at RCPT) or Drop
	// (accepted, and sent nothing).
	OnSubmission string `json:"onSubmission,omitempty"`
}

// Suppression.OnSubmission values.
const (
	SuppressionRefuse = "Refuse"
	SuppressionDrop   = "Drop"
)

// Webhooks tunes the posting of delivery events to the webhooks the
// accounts' credentials name (relay/webhook).
type Webhooks struct {
	// AllowHTTP allows http:// webhook URLs; by default only https://.
	AllowHTTP bool `json:"allowHTTP,omitempty"`
	// AllowedDestinations are special-purpose networks (CIDRs) webhooks
	// may reach anyway; by default public addresses only, as direct MX
	// delivery.
	AllowedDestinations []string `json:"allowedDestinations,omitempty"`
	// BatchSize and BatchWait: a POST carries up to BatchSize events
	// (default 100), sent BatchWait after the first (default 1s).
	BatchSize int      `json:"batchSize,omitempty"`
	BatchWait Duration `json:"batchWait,omitempty"`
	// Timeout bounds one POST (default 10s).
	Timeout Duration `json:"timeout,omitempty"`
	// GiveUp is how long an event is retried before it is dropped
	// (default 24h).
	GiveUp Duration `json:"giveUp,omitempty"`
}

// DestinationPrefixes parses AllowedDestinations.
func (w Webhooks) DestinationPrefixes() ([]netip.Prefix, error) {
	return parsePrefixes("webhooks.allowedDestinations", w.AllowedDestinations)
}

// Backoff is the retry schedule: Min doubling up to Max (defaults 5m and
// 4000s, Postfix's), or the explicit Schedule, whose last entry repeats.
type Backoff struct {
	Min      Duration   `json:"min,omitempty"`
	Max      Duration   `json:"max,omitempty"`
	Schedule []Duration `json:"schedule,omitempty"`
}

// Smarthost is the server every message is handed to.
type Smarthost struct {
	// Name labels the delivery metrics (default: Host).
	Name string `json:"name,omitempty"`
	Host string `json:"host"`
	// Port defaults to 465 with tls: implicit, else 587.
	Port int `json:"port,omitempty"`
	// TLS is opportunistic (default), required, implicit or none.
	TLS string `json:"tls,omitempty"`
	// CAFile holds the authorities that sign its certificate (default: the
	// system's).
	CAFile string `json:"caFile,omitempty"`
	// UsernameFile and PasswordFile hold AUTH credentials, when it wants them.
	UsernameFile string `json:"usernameFile,omitempty"`
	PasswordFile string `json:"passwordFile,omitempty"`
	// MaxConnections bounds the pooled sessions (default 20).
	MaxConnections int `json:"maxConnections,omitempty"`
}

// Defaults for the budget sidecar.
const (
	DefaultSidecarAddress = "127.0.0.1:8081"
	DefaultSidecarTimeout = 100 * time.Millisecond
)

// DefaultListeners are the contract's ports: STARTTLS on 25, 587 and 2525
// and implicit TLS on 465; each takes AUTH only once encrypted.
func DefaultListeners() []Listener {
	return []Listener{
		{Name: "smtp", Address: ":25"},
		{Name: "submission", Address: ":587"},
		{Name: "alt", Address: ":2525"},
		{Name: "smtps", Address: ":465", ImplicitTLS: true},
	}
}

// Load reads a YAML or JSON file; unknown fields are errors, so a typo does
// not silently fall back to a default.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read relay config: %w", err)
	}
	var c Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return Config{}, fmt.Errorf("parse relay config %s: %w", path, err)
	}
	c.Defaults()
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("relay config %s: %w", path, err)
	}
	return c, nil
}

// Defaults fills what the file left out.
func (c *Config) Defaults() {
	if c.Listeners == nil {
		c.Listeners = DefaultListeners()
	}
	if c.Node == "" {
		c.Node, _ = os.Hostname()
	}
	if c.HTTPAPI != nil && c.HTTPAPI.Address == "" {
		c.HTTPAPI.Address = DefaultHTTPAPIAddress
	}
	if c.MetricsAddress == "" {
		c.MetricsAddress = ":9090"
	}
	if c.DrainGracePeriod.Duration == 0 {
		c.DrainGracePeriod.Duration = 30 * time.Second
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.Queue.NATS == nil && c.Queue.Embedded == nil {
		c.Queue.Embedded = &EmbeddedQueue{}
	}
	if e := c.Queue.Embedded; e != nil && e.Dir == "" {
		e.Dir = c.SpoolDir
	}
	if c.Queue.AckWait.Duration == 0 {
		c.Queue.AckWait.Duration = time.Minute
	}
	if sc := c.Budget.Sidecar; sc != nil {
		if sc.Address == "" {
			sc.Address = DefaultSidecarAddress
		}
		if sc.Timeout.Duration == 0 {
			sc.Timeout.Duration = DefaultSidecarTimeout
		}
	}
}

// Validate says what to fix.
func (c *Config) Validate() error {
	var errs []error
	switch {
	case c.CredentialsFile == "" && c.CredentialsSecrets == nil:
		errs = append(errs, errors.New("credentialsFile or credentialsSecrets: one is required"))
	case c.CredentialsFile != "" && c.CredentialsSecrets != nil:
		errs = append(errs, errors.New("credentialsFile and credentialsSecrets: set only one"))
	case c.CredentialsSecrets != nil && (c.CredentialsSecrets.Namespace == "" || c.CredentialsSecrets.Relay == ""):
		errs = append(errs, errors.New("credentialsSecrets: namespace and relay are both required"))
	}
	errs = append(errs, c.validateQueue()...)
	errs = append(errs, c.validateDelivery()...)
	if c.Suppression.BounceTTL.Duration < 0 {
		errs = append(errs, errors.New("suppression.bounceTTL: must be positive, or left out for 720h"))
	}
	switch c.Suppression.OnSubmission {
	case "", SuppressionRefuse, SuppressionDrop:
	default:
		errs = append(errs, fmt.Errorf("suppression.onSubmission: %q is not Refuse or Drop", c.Suppression.OnSubmission))
	}
	if c.Events.MaxAge.Duration < 0 || c.Events.MaxBytes < 0 || c.Events.Buffer < 0 {
		errs = append(errs, errors.New("events.maxAge, events.maxBytes and events.buffer: must be positive, or left out for the defaults"))
	}
	w := c.Webhooks
	if w.BatchSize < 0 || w.BatchWait.Duration < 0 || w.Timeout.Duration < 0 || w.GiveUp.Duration < 0 {
		errs = append(errs, errors.New("webhooks: batchSize, batchWait, timeout and giveUp must be positive, or left out for the defaults"))
	}
	if _, err := w.DestinationPrefixes(); err != nil {
		errs = append(errs, err)
	}
	if len(c.Listeners) == 0 {
		errs = append(errs, errors.New("listeners: at least one is required"))
	}
	names := map[string]bool{}
	for i, l := range c.Listeners {
		switch {
		case l.Name == "" || l.Address == "":
			errs = append(errs, fmt.Errorf("listeners[%d]: name and address are required", i))
		case names[l.Name]:
			errs = append(errs, fmt.Errorf("listeners[%d]: name %q is used twice", i, l.Name))
		case l.ImplicitTLS && c.TLS == nil:
			errs = append(errs, fmt.Errorf("listeners[%d] (%s): implicitTLS needs tls.certFile and tls.keyFile", i, l.Name))
		}
		if err := l.validateProxy(); err != nil {
			errs = append(errs, fmt.Errorf("listeners[%d] (%s): %w", i, l.Name, err))
		}
		names[l.Name] = true
	}
	if c.TLS != nil && (c.TLS.CertFile == "" || c.TLS.KeyFile == "") {
		errs = append(errs, errors.New("tls: certFile and keyFile are both required"))
	}
	errs = append(errs, c.validateMetrics()...)
	errs = append(errs, c.validateHTTPAPI()...)
	if sc := c.Budget.Sidecar; sc != nil {
		if _, _, err := net.SplitHostPort(sc.Address); err != nil {
			errs = append(errs, fmt.Errorf("budget.sidecar.address: %w", err))
		}
		if sc.Timeout.Duration < 0 {
			errs = append(errs, errors.New("budget.sidecar.timeout: must be positive"))
		}
		// A minute is the budgets' window: a lease lasting longer, or
		// held that long idle, would strand a window's budget on one relay.
		for _, d := range []struct {
			name string
			v    time.Duration
		}{{"leaseLife", sc.LeaseLife.Duration}, {"idleReturn", sc.IdleReturn.Duration}} {
			if d.v != 0 && (d.v < time.Millisecond || d.v > 30*time.Second) {
				errs = append(errs, fmt.Errorf("budget.sidecar.%s: %s is out of range; set 1ms to 30s, or leave it out for the default", d.name, d.v))
			}
		}
	}
	if c.Budget.PodShare < 0 || (c.Budget.PodShare > 0 && c.Budget.Sidecar != nil) {
		errs = append(errs, errors.New("budget.podShare: must be positive, and only without budget.sidecar (the sidecar counts for the whole fleet)"))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("logLevel: %q is not one of debug, info, warn, error", c.LogLevel))
	}
	return errors.Join(errs...)
}

func (c *Config) validateHTTPAPI() []error {
	h := c.HTTPAPI
	if !h.Serves() {
		return nil
	}
	var errs []error
	if c.TLS == nil {
		errs = append(errs, errors.New("httpAPI: the API serves HTTPS only; set tls.certFile and tls.keyFile, or enabled: false"))
	}
	if _, _, err := net.SplitHostPort(h.Address); err != nil {
		errs = append(errs, fmt.Errorf("httpAPI.address %q: want host:port such as :8443", h.Address))
	}
	if err := h.validateProxy(); err != nil {
		errs = append(errs, fmt.Errorf("httpAPI: %w", err))
	}
	return errs
}

func (c *Config) validateQueue() []error {
	var errs []error
	q := c.Queue
	switch {
	case q.Embedded != nil && q.NATS != nil:
		errs = append(errs, errors.New("queue: set only one of embedded and nats"))
	case q.Embedded != nil && q.Embedded.Dir == "":
		errs = append(errs, errors.New("spoolDir or queue.embedded.dir: required for the embedded queue"))
	case q.NATS != nil:
		n := q.NATS
		if n.URL == "" {
			errs = append(errs, errors.New("queue.nats.url: required"))
		}
		if (n.UserFile == "") != (n.PasswordFile == "") {
			errs = append(errs, errors.New("queue.nats.userFile and passwordFile: set both or neither"))
		}
		if n.Replicas < 0 || n.Replicas > 5 {
			errs = append(errs, errors.New("queue.nats.replicas: between 1 and 5"))
		}
	}
	if q.AckWait.Duration < 3*time.Second {
		errs = append(errs, errors.New("queue.ackWait: at least 3s"))
	}
	return errs
}

func (c *Config) validateMetrics() []error {
	m := c.Metrics
	if m == nil || m.TLS == nil {
		return nil
	}
	var errs []error
	if !m.SeparateAddress(c.MetricsAddress) {
		errs = append(errs, errors.New("metrics.tls: needs metrics.address, other than metricsAddress, so that /healthz and /readyz stay in clear for kubelet's probes"))
	}
	switch {
	case (m.TLS.CertFile == "") != (m.TLS.KeyFile == ""):
		errs = append(errs, errors.New("metrics.tls: set both certFile and keyFile, or neither to use the relay's tls files"))
	case m.TLS.CertFile == "" && c.TLS == nil:
		errs = append(errs, errors.New("metrics.tls: without certFile and keyFile it uses the relay's tls files, and tls is not set"))
	}
	return errs
}

func (c *Config) validateDelivery() []error {
	var errs []error
	d := c.Delivery
	if d.Workers < 0 || d.PerDomain < 0 {
		errs = append(errs, errors.New("delivery.workers and delivery.perDomain: must be positive"))
	}
	if d.Backoff.Min.Duration < 0 || d.Backoff.Max.Duration < 0 || d.Expiry.Duration < 0 {
		errs = append(errs, errors.New("delivery.backoff and delivery.expiry: durations must be positive"))
	}
	if d.Backoff.Max.Duration > 0 && d.Backoff.Max.Duration < d.Backoff.Min.Duration {
		errs = append(errs, errors.New("delivery.backoff.max: must not be below min"))
	}
	if _, err := d.DestinationPrefixes(); err != nil {
		errs = append(errs, err)
	}
	for i, s := range d.Backoff.Schedule {
		if s.Duration <= 0 {
			errs = append(errs, fmt.Errorf("delivery.backoff.schedule[%d]: must be positive", i))
		}
	}
	if sh := d.Smarthost; sh != nil {
		if sh.Host == "" {
			errs = append(errs, errors.New("delivery.smarthost.host: required"))
		}
		if d.LocalDir != "" {
			errs = append(errs, errors.New("delivery: set only one of smarthost and localDir"))
		}
		if (sh.UsernameFile == "") != (sh.PasswordFile == "") {
			errs = append(errs, errors.New("delivery.smarthost.usernameFile and passwordFile: set both or neither"))
		}
		switch strings.ToLower(sh.TLS) {
		case "", "opportunistic", "required", "implicit", "none":
		default:
			errs = append(errs, fmt.Errorf("delivery.smarthost.tls: %q is not one of opportunistic, required, implicit, none", sh.TLS))
		}
	}
	return errs
}

// Duration is a time.Duration written as "30s" or "5m".
type Duration struct{ time.Duration }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string such as \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	d.Duration = v
	return nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(d.String())
}
