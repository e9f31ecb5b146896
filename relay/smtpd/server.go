// Package smtpd is the relay's SMTP protocol engine: the submission
// contract (replies.go) on plain (STARTTLS) and implicit-TLS listeners,
// with PIPELINING, enhanced status codes, the PROXY protocol, line and size
// limits, per-client connection caps and drain. What a session may do, and
// where its messages go, a Backend decides (backend.go); the relay's is
// relay/submission.
//
// It speaks SMTP itself rather than through go-smtp's server, because the
// contract fixes reply texts and codes that go-smtp hard-codes differently
// (MAIL, RCPT, EHLO, QUIT, HELP, 235, 354, 530); it takes go-smtp's split
// between the protocol and the Backend.
package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Listener is one port the relay serves.
type Listener struct {
	// Name labels the listener in metrics and logs (smtp, submission, smtps...).
	Name string
	// Addr is host:port; port 0 picks a free one (tests).
	Addr string
	// ImplicitTLS starts TLS on connect (port 465); otherwise STARTTLS is
	// offered when a certificate is configured.
	ImplicitTLS bool
	// AllowAuthWithoutTLS offers AUTH before the session is encrypted. By
	// default AUTH is neither offered nor accepted until it is, as Postfix's
	// smtpd_tls_auth_only, so no key crosses the network in clear.
	AllowAuthWithoutTLS bool
	// ProxyProtocol expects every connection to open with a PROXY protocol
	// header (v1 or v2) from a peer in TrustedProxies, and takes the client
	// address from it; connections from elsewhere are closed. Without it no
	// header is ever parsed.
	ProxyProtocol  bool
	TrustedProxies []netip.Prefix
}

// Config is what the server needs besides its collaborators. Zero values take
// the defaults that Defaults documents.
type Config struct {
	Hostname  string
	Banner    string
	Listeners []Listener
	// TLS is the server-side TLS configuration; nil means no STARTTLS and no
	// implicit-TLS listeners.
	TLS *tls.Config

	MaxMessageBytes int64
	// MaxRecipients caps a message's recipients, whoever sends it; a
	// Backend may cap lower.
	MaxRecipients int
	// MaxLineLength caps a message line, CRLF excluded; command lines are
	// capped at maxCommandLine.
	MaxLineLength  int
	MaxConnections int
	// MaxConnectionsPerClient caps one address's open sessions (default
	// 50, Postfix's); ConnectionRatePerClient caps its new connections per
	// minute (default 0: no cap). Negative turns a cap off.
	MaxConnectionsPerClient int
	ConnectionRatePerClient int
	MaxErrors               int
	CommandTimeout          time.Duration
	DataTimeout             time.Duration
}

// Defaults fills unset fields: SIZE 16000000 as the contract advertises,
// Postfix-like recipient and time limits.
func (c *Config) Defaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Hostname == "" {
		c.Hostname = "localhost"
	}
	if c.Banner == "" {
		c.Banner = "mailfleet"
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = 16_000_000
	}
	def(&c.MaxRecipients, 1000)
	def(&c.MaxLineLength, 8192)
	def(&c.MaxConnections, 1000)
	def(&c.MaxConnectionsPerClient, 50)
	def(&c.MaxErrors, 10)
	defDur(&c.CommandTimeout, 5*time.Minute)
	defDur(&c.DataTimeout, 10*time.Minute)
}

// maxCommandLine caps a command line; RFC 5321 asks for at least 512.
const maxCommandLine = 2048

// Deps are the server's collaborators.
type Deps struct {
	Backend Backend
	Metrics *Metrics
	Log     *slog.Logger
}

// Server serves SMTP on its listeners.
type Server struct {
	cfg   Config
	deps  Deps
	anvil *anvil

	active   atomic.Int64
	draining atomic.Bool
	closing  atomic.Bool

	ctx    context.Context // ends when Shutdown gives up on open sessions
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[string]net.Listener
	sessions  map[*session]struct{}
	headers   headerWaits
	wg        sync.WaitGroup
}

// New checks the configuration and returns a server that is not listening yet.
func New(cfg Config, deps Deps) (*Server, error) {
	cfg.Defaults()
	if deps.Backend == nil || deps.Metrics == nil {
		return nil, errors.New("smtpd: Backend and Metrics are required")
	}
	if deps.Log == nil {
		deps.Log = slog.Default()
	}
	for _, l := range cfg.Listeners {
		if l.ImplicitTLS && cfg.TLS == nil {
			return nil, fmt.Errorf("listener %s: implicit TLS needs a certificate", l.Name)
		}
		if l.ProxyProtocol && len(l.TrustedProxies) == 0 {
			return nil, fmt.Errorf("listener %s: PROXY protocol needs the load balancers' address ranges", l.Name)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:       cfg,
		deps:      deps,
		anvil:     newAnvil(max(cfg.MaxConnectionsPerClient, 0), max(cfg.ConnectionRatePerClient, 0)),
		ctx:       ctx,
		cancel:    cancel,
		listeners: map[string]net.Listener{},
		sessions:  map[*session]struct{}{},
	}, nil
}

// Start binds every listener and serves them in the background. Either all
// listeners are bound or none is.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.cfg.Listeners {
		ln, err := net.Listen("tcp", l.Addr)
		if err != nil {
			for _, bound := range s.listeners {
				bound.Close()
			}
			return fmt.Errorf("listen %s on %s: %w", l.Name, l.Addr, err)
		}
		s.listeners[l.Name] = ln
	}
	for _, l := range s.cfg.Listeners {
		s.deps.Log.Info("listening", "listener", l.Name, "address", s.listeners[l.Name].Addr().String(),
			"implicit_tls", l.ImplicitTLS, "auth_without_tls", l.AllowAuthWithoutTLS, "proxy_protocol", l.ProxyProtocol)
		s.wg.Add(1)
		go s.accept(l, s.listeners[l.Name])
	}
	return nil
}

// Addr returns the bound address of the named listener, nil if there is none.
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ln, ok := s.listeners[name]; ok {
		return ln.Addr()
	}
	return nil
}

// Ready reports whether the server takes new sessions.
func (s *Server) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.listeners) > 0 && !s.draining.Load()
}

// Drain makes new sessions get 421 (so clients move to another relay) while
// open sessions go on.
func (s *Server) Drain() {
	if !s.draining.Swap(true) {
		s.deps.Log.Info("draining: new sessions are refused with 421", "open_sessions", s.active.Load())
	}
}

// Shutdown drains, waits for open sessions to end, and when ctx ends first
// tells each remaining session 421 and closes it. A message being received
// then is not acknowledged, so nothing acknowledged is lost.
func (s *Server) Shutdown(ctx context.Context) error {
	s.Drain()
	done := make(chan struct{})
	go func() {
		s.waitSessions()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.closing.Store(true)
		s.cancel()
		s.mu.Lock()
		for sess := range s.sessions {
			sess.interrupt()
		}
		s.mu.Unlock()
		<-done
	}
	s.mu.Lock()
	for _, ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	s.headers.stop()
	s.wg.Wait()
	s.cancel()
	return nil
}

// waitSessions returns once no session is open.
func (s *Server) waitSessions() {
	for s.active.Load() > 0 {
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *Server) accept(l Listener, ln net.Listener) {
	defer s.wg.Done()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.deps.Log.Warn("accept failed", "listener", l.Name, "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if l.ProxyProtocol {
			// Added here, while accept's own count holds the group open.
			s.wg.Add(1)
			go s.admitProxied(l, conn)
			continue
		}
		s.admit(l, conn)
	}
}

// admit starts a session, or answers 421 when the server is draining or full.
func (s *Server) admit(l Listener, conn net.Conn) {
	reason, reply := "", Reply{}
	switch {
	case s.draining.Load():
		reason, reply = "draining", ReplyShuttingDown.With(s.cfg.Hostname)
	case s.active.Load() >= int64(s.cfg.MaxConnections):
		reason, reply = "max_connections", ReplyBusy.With(s.cfg.Hostname)
	}
	ip := remoteIP(conn.RemoteAddr())
	if reason == "" {
		switch reason = s.anvil.connect(ip); reason {
		case anvilTooMany:
			reply = ReplyClientBusy.With(s.cfg.Hostname)
		case anvilTooFast:
			reply = ReplyClientTooFast.With(s.cfg.Hostname)
		}
	}
	if reason != "" {
		s.deps.Metrics.refused.WithLabelValues(reason).Inc()
		go refuse(conn, l.ImplicitTLS, reply)
		return
	}
	sess := newSession(s, l, conn)
	s.active.Add(1)
	s.mu.Lock()
	s.sessions[sess] = struct{}{}
	s.mu.Unlock()
	s.deps.Metrics.sessions.WithLabelValues(l.Name).Inc()
	s.deps.Metrics.active.WithLabelValues(l.Name).Inc()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		sess.serve()
		s.mu.Lock()
		delete(s.sessions, sess)
		s.mu.Unlock()
		s.deps.Metrics.active.WithLabelValues(l.Name).Dec()
		s.active.Add(-1)
		s.anvil.disconnect(ip)
	}()
}

// refuse answers 421 and closes. On an implicit-TLS port a plaintext reply
// would be garbage to the client, so the connection is only closed.
func refuse(conn net.Conn, implicitTLS bool, reply Reply) {
	defer conn.Close()
	if implicitTLS {
		return
	}
	conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "%s\r\n", reply)
}
