// Package config is the relay's configuration file: what `mailfleet relay
// --config` reads and what the operator renders into a ConfigMap.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
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
	TLS       *TLS       `json:"tls,omitempty"`
	// CredentialsFile holds accounts and labels (see relay/credentials).
	// Exactly one of CredentialsFile and CredentialsSecrets is set.
	CredentialsFile string `json:"credentialsFile,omitempty"`
	// CredentialsSecrets reads the shards the operator publishes for this
	// relay from the API server, in the relay's own namespace.
	CredentialsSecrets *CredentialsSecrets `json:"credentialsSecrets,omitempty"`
	// SpoolDir is where accepted messages wait for delivery.
	SpoolDir string `json:"spoolDir"`
	// MetricsAddress serves /metrics, /healthz and /readyz.
	MetricsAddress string `json:"metricsAddress,omitempty"`
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
	Name            string `json:"name"`
	Address         string `json:"address"`
	ImplicitTLS     bool   `json:"implicitTLS,omitempty"`
	AuthRequiresTLS bool   `json:"authRequiresTLS,omitempty"`
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
	MaxMessageBytes   int64    `json:"maxMessageBytes,omitempty"`
	MaxRecipients     int      `json:"maxRecipients,omitempty"`
	MaxLineLength     int      `json:"maxLineLength,omitempty"`
	MaxConnections    int      `json:"maxConnections,omitempty"`
	CommandTimeout    Duration `json:"commandTimeout,omitempty"`
	DataTimeout       Duration `json:"dataTimeout,omitempty"`
	AuthFailureLimit  int      `json:"authFailureLimit,omitempty"`
	AuthFailureWindow Duration `json:"authFailureWindow,omitempty"`
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
	// Timeout bounds one decision; past it the message gets 451 4.7.1
	// (default 100ms: twice the sidecar's Redis deadline, so the sidecar's
	// own failure mode answers first).
	Timeout Duration `json:"timeout,omitempty"`
}

// Defaults for the budget sidecar.
const (
	DefaultSidecarAddress = "127.0.0.1:8081"
	DefaultSidecarTimeout = 100 * time.Millisecond
)

// DefaultListeners are the contract's ports: STARTTLS on 25, 587 and 2525
// (587 only lets AUTH in after STARTTLS, in RFC 8314's spirit) and implicit
// TLS on 465.
func DefaultListeners() []Listener {
	return []Listener{
		{Name: "smtp", Address: ":25"},
		{Name: "submission", Address: ":587", AuthRequiresTLS: true},
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
	if c.MetricsAddress == "" {
		c.MetricsAddress = ":9090"
	}
	if c.DrainGracePeriod.Duration == 0 {
		c.DrainGracePeriod.Duration = 30 * time.Second
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
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
	if c.SpoolDir == "" {
		errs = append(errs, errors.New("spoolDir: required"))
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
		names[l.Name] = true
	}
	if c.TLS != nil && (c.TLS.CertFile == "" || c.TLS.KeyFile == "") {
		errs = append(errs, errors.New("tls: certFile and keyFile are both required"))
	}
	if sc := c.Budget.Sidecar; sc != nil {
		if _, _, err := net.SplitHostPort(sc.Address); err != nil {
			errs = append(errs, fmt.Errorf("budget.sidecar.address: %w", err))
		}
		if sc.Timeout.Duration < 0 {
			errs = append(errs, errors.New("budget.sidecar.timeout: must be positive"))
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
