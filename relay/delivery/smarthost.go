package delivery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"
)

// TLSMode says how a transport protects a session with TLS.
type TLSMode int

const (
	// TLSOpportunistic uses STARTTLS when the server offers it, without
	// verifying the certificate (Postfix's "may"): it defeats passive
	// eavesdropping, and a handshake that fails is retried in plain text.
	TLSOpportunistic TLSMode = iota
	// TLSRequired insists on STARTTLS with a verified certificate; a
	// server that does not offer it, or fails the handshake, defers the
	// message.
	TLSRequired
	// TLSImplicit speaks TLS from the first byte (port 465, RFC 8314),
	// verifying the certificate.
	TLSImplicit
	// TLSNone never uses TLS.
	TLSNone
)

// ParseTLSMode reads a mode as configuration spells it: "opportunistic"
// (also ""), "required", "implicit" or "none".
func ParseTLSMode(s string) (TLSMode, error) {
	switch strings.ToLower(s) {
	case "", "opportunistic":
		return TLSOpportunistic, nil
	case "required":
		return TLSRequired, nil
	case "implicit":
		return TLSImplicit, nil
	case "none":
		return TLSNone, nil
	}
	return 0, fmt.Errorf("unknown TLS mode %q (want opportunistic, required, implicit or none)", s)
}

func (m TLSMode) String() string {
	switch m {
	case TLSOpportunistic:
		return "opportunistic"
	case TLSRequired:
		return "required"
	case TLSImplicit:
		return "implicit"
	case TLSNone:
		return "none"
	}
	return "TLSMode(" + strconv.Itoa(int(m)) + ")"
}

// Defaults of the network transports, after Postfix's smtp(8) where it has
// one.
const (
	DefaultDialTimeout    = 30 * time.Second // smtp_connect_timeout
	DefaultCommandTimeout = 5 * time.Minute  // RFC 5321 §4.5.3.2
	// DefaultDataTimeout bounds each write of the body without progress
	// (smtp_data_xfer_timeout).
	DefaultDataTimeout = 3 * time.Minute
	// DefaultIdleTimeout closes pooled sessions before servers drop them
	// (Postfix keeps them 2 s; a smarthost is ours, and RSET checks anyway).
	DefaultIdleTimeout = 30 * time.Second
	// DefaultMaxConnectionAge retires a session after a while, as Postfix's
	// smtp_connection_reuse_time_limit, so load spreads over a smarthost's
	// backends behind a balancer.
	DefaultMaxConnectionAge   = 5 * time.Minute
	DefaultMaxConnections     = 20 // default_destination_concurrency_limit
	defaultSmarthostTransport = "smarthost"
)

// SmarthostConfig configures a Smarthost. Zero values take the defaults.
type SmarthostConfig struct {
	// Host and Port locate the smarthost; Port defaults to 465 with
	// TLSImplicit and 587 otherwise.
	Host string
	Port int
	TLS  TLSMode
	// ServerName is the name its certificate must carry (default Host);
	// RootCAs the authorities to trust (default: the system's).
	ServerName string
	RootCAs    *x509.CertPool
	// Username and Password, when Username is set, log in with AUTH PLAIN
	// or LOGIN. Credentials are only sent over TLS unless
	// AllowAuthWithoutTLS.
	Username, Password  string
	AllowAuthWithoutTLS bool
	// Hostname is this relay's name, in EHLO and the Received header.
	Hostname string
	// LabelHeader names the account/label header (DefaultLabelHeader).
	LabelHeader string

	MaxConnections   int
	IdleTimeout      time.Duration
	MaxConnectionAge time.Duration
	DialTimeout      time.Duration
	CommandTimeout   time.Duration
	DataTimeout      time.Duration

	// Dial opens connections (default: a net.Dialer).
	Dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	Log     *slog.Logger
	Metrics *Metrics
}

// Smarthost hands every message to one relay server over pooled, reused
// sessions.
type Smarthost struct {
	cfg    SmarthostConfig
	params dialParams
	trace  Trace
	pool   *pool
	log    *slog.Logger
	remote string
}

// NewSmarthost returns a transport to cfg.Host. Close releases its
// connections.
func NewSmarthost(cfg SmarthostConfig) (*Smarthost, error) {
	if cfg.Host == "" {
		return nil, errors.New("smarthost: no host configured")
	}
	if cfg.Hostname == "" {
		return nil, errors.New("smarthost: no hostname configured for EHLO")
	}
	if cfg.Port == 0 {
		cfg.Port = 587
		if cfg.TLS == TLSImplicit {
			cfg.Port = 465
		}
	}
	if cfg.ServerName == "" {
		cfg.ServerName = cfg.Host
	}
	cfg.MaxConnections = orDefault(cfg.MaxConnections, DefaultMaxConnections)
	cfg.IdleTimeout = orDefault(cfg.IdleTimeout, DefaultIdleTimeout)
	cfg.MaxConnectionAge = orDefault(cfg.MaxConnectionAge, DefaultMaxConnectionAge)
	cfg.DialTimeout = orDefault(cfg.DialTimeout, DefaultDialTimeout)
	cfg.CommandTimeout = orDefault(cfg.CommandTimeout, DefaultCommandTimeout)
	cfg.DataTimeout = orDefault(cfg.DataTimeout, DefaultDataTimeout)
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	s := &Smarthost{
		cfg:    cfg,
		trace:  Trace{Hostname: cfg.Hostname, LabelHeader: cfg.LabelHeader},
		log:    cfg.Log.With("transport", defaultSmarthostTransport, "smarthost", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))),
		remote: cfg.Host,
	}
	s.params = dialParams{
		host:        cfg.Host,
		addr:        net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)),
		localName:   cfg.Hostname,
		tls:         cfg.TLS,
		tlsConfig:   tlsConfig(cfg.TLS, cfg.ServerName, cfg.RootCAs),
		username:    cfg.Username,
		password:    cfg.Password,
		authNoTLS:   cfg.AllowAuthWithoutTLS,
		dialTimeout: cfg.DialTimeout,
		cmdTimeout:  cfg.CommandTimeout,
		dataTimeout: cfg.DataTimeout,
		dialContext: cfg.Dial,
		onOpened:    func() { cfg.Metrics.connOpened(defaultSmarthostTransport) },
		onClosed:    func() { cfg.Metrics.connClosed(defaultSmarthostTransport) },
	}
	s.pool = newPool(cfg.MaxConnections, cfg.IdleTimeout, cfg.MaxConnectionAge, s.connect,
		func(*client) { cfg.Metrics.connClosed(defaultSmarthostTransport) })
	return s, nil
}

// tlsConfig is the client TLS configuration for mode.
func tlsConfig(mode TLSMode, serverName string, roots *x509.CertPool) *tls.Config {
	cfg := &tls.Config{ServerName: serverName, RootCAs: roots, MinVersion: tls.VersionTLS12}
	if mode == TLSOpportunistic {
		// Opportunistic TLS only protects against passive listeners; an
		// unverifiable certificate must not make mail fall back to plain
		// text, which would protect against nothing (RFC 7435).
		cfg.InsecureSkipVerify = true
	}
	return cfg
}

// connect opens a session; in opportunistic mode a failed handshake is
// retried once in plain text, as the alternative is not delivering at all.
func (s *Smarthost) connect(ctx context.Context) (*client, error) {
	c, err := dial(ctx, s.params)
	var se *sessionError
	if err != nil && s.cfg.TLS == TLSOpportunistic && errors.As(err, &se) && se.tlsFailed {
		s.log.Warn("TLS handshake failed, retrying without TLS", "err", err)
		p := s.params
		p.forcePlain = true
		return dial(ctx, p)
	}
	return c, err
}

// Deliver sends msg to the smarthost and returns one Result per recipient.
// A pooled session that turns out to be dead before the server accepted
// anything is discarded and the message is tried once more on a new one.
func (s *Smarthost) Deliver(ctx context.Context, msg Message) []Result {
	rcpts := msg.Envelope.To
	if len(rcpts) == 0 {
		return nil
	}
	t := transaction{
		msg: msg, rcpts: rcpts,
		headers: s.trace.Headers(msg.Envelope, rcpts),
		strip:   s.trace.headerName(),
	}
	for attempt := 0; ; attempt++ {
		c, reused, err := s.pool.get(ctx)
		if err != nil {
			s.log.Warn("no session with the smarthost", "id", msg.Envelope.ID, "err", err)
			return errorResults(rcpts, fmt.Errorf("smarthost %s: %w", s.params.addr, err), s.remote)
		}
		t.reset = reused
		results, broken, retryable := c.transact(ctx, t)
		if broken == nil {
			s.pool.put(c)
			return results
		}
		s.pool.discard(c)
		if reused && retryable && attempt == 0 && ctx.Err() == nil {
			s.log.Info("pooled session was dead, retrying on a new one", "id", msg.Envelope.ID, "err", broken)
			continue
		}
		s.log.Warn("smarthost session broke", "id", msg.Envelope.ID, "err", broken)
		return results
	}
}

// Close ends the idle sessions; sessions busy with a delivery close when it
// ends.
func (s *Smarthost) Close() error {
	s.pool.shut()
	return nil
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
