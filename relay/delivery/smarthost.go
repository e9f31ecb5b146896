package delivery

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/mailfleet/mailfleet/relay/smtpclient"
)

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
	TLS  smtpclient.TLSMode
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
	trace   Trace
	pool    *smtpclient.Pool
	log     *slog.Logger
	addr    string
	remote  string
	metrics *Metrics
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
	cfg = cfg.withDefaults()
	addr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
	s := &Smarthost{
		trace:   Trace{Hostname: cfg.Hostname, LabelHeader: cfg.LabelHeader},
		log:     cfg.Log.With("transport", defaultSmarthostTransport, "smarthost", addr),
		addr:    addr,
		remote:  cfg.Host,
		metrics: cfg.Metrics,
	}
	params := s.params(cfg)
	s.pool = smtpclient.NewPool(cfg.MaxConnections, cfg.IdleTimeout, cfg.MaxConnectionAge,
		func(ctx context.Context) (*smtpclient.Client, error) { return smtpclient.Dial(ctx, params) })
	return s, nil
}

func (cfg SmarthostConfig) withDefaults() SmarthostConfig {
	if cfg.Port == 0 {
		cfg.Port = 587
		if cfg.TLS == smtpclient.TLSImplicit {
			cfg.Port = 465
		}
	}
	if cfg.ServerName == "" {
		cfg.ServerName = cfg.Host
	}
	cfg.MaxConnections = orDefault(cfg.MaxConnections, DefaultMaxConnections)
	cfg.IdleTimeout = orDefault(cfg.IdleTimeout, DefaultIdleTimeout)
	cfg.MaxConnectionAge = orDefault(cfg.MaxConnectionAge, DefaultMaxConnectionAge)
	sessionDefaults(&cfg.DialTimeout, &cfg.CommandTimeout, &cfg.DataTimeout, &cfg.Log)
	return cfg
}

// params say how to open a session with the smarthost; the plain-text retry
// after a failed opportunistic handshake is logged.
func (s *Smarthost) params(cfg SmarthostConfig) smtpclient.Params {
	return smtpclient.Params{
		Host:                cfg.Host,
		Addr:                s.addr,
		LocalName:           cfg.Hostname,
		TLS:                 cfg.TLS,
		ServerName:          cfg.ServerName,
		RootCAs:             cfg.RootCAs,
		Username:            cfg.Username,
		Password:            cfg.Password,
		AllowAuthWithoutTLS: cfg.AllowAuthWithoutTLS,
		DialTimeout:         cfg.DialTimeout,
		CommandTimeout:      cfg.CommandTimeout,
		DataTimeout:         cfg.DataTimeout,
		Dial:                cfg.Dial,
		OnOpened:            func() { cfg.Metrics.connOpened(defaultSmarthostTransport) },
		OnClosed:            func() { cfg.Metrics.connClosed(defaultSmarthostTransport) },
		OnPlainRetry: func(err error) {
			s.log.Warn("TLS handshake failed, retrying without TLS", "err", err)
		},
	}
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
		c, reused, err := s.pool.Get(ctx)
		if err != nil {
			s.log.Warn("no session with the smarthost", "id", msg.Envelope.ID, "err", err)
			return errorResults(rcpts, fmt.Errorf("smarthost %s: %w", s.addr, err), s.remote)
		}
		s.metrics.offered(defaultSmarthostTransport, reused)
		results, broken, retryable := transact(ctx, c, t, reused)
		results = withTLS(results, c.TLS(), TLSPolicySmarthost)
		if broken == nil {
			s.pool.Put(c)
			return results
		}
		s.pool.Discard(c)
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
	s.pool.Close()
	return nil
}

// sessionDefaults fills in the settings left zero that both network
// transports, MX and Smarthost, pass to their SMTP sessions.
func sessionDefaults(dial, command, data *time.Duration, log **slog.Logger) {
	*dial = orDefault(*dial, DefaultDialTimeout)
	*command = orDefault(*command, DefaultCommandTimeout)
	*data = orDefault(*data, DefaultDataTimeout)
	if *log == nil {
		*log = slog.New(slog.DiscardHandler)
	}
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
