// Package httpapi is the relay's HTTP send API: POST /v1/mail/send on a
// listener of its own, over TLS with the relay's certificate. It decodes
// and checks a request, builds the MIME message, and hands it to the same
// submission policy as SMTP (relay/submission): the same verifier and
// failed-auth throttle, sender and From rules, budget and durable queue.
// GET /v1/openapi.json serves the API's OpenAPI 3 document.
package httpapi

import (
	"context"
	"crypto/tls"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strings"
	"time"

	"github.com/pires/go-proxyproto"
	"golang.org/x/net/netutil"
)

// openAPIDocument is the API's description; docs/api/openapi.json is the
// same file, and the package's tests hold both to the handlers.
//
//go:embed openapi.json
var openAPIDocument []byte

// Options configure the API's server. Zero durations and limits take the
// defaults that Defaults documents.
type Options struct {
	// Addr is where to listen, such as ":8443" or "127.0.0.1:0".
	Addr string
	// TLS serves the relay's certificate (certs.ServerTLSConfig); it is
	// required, and TLS 1.2 is the oldest version accepted.
	TLS    *tls.Config
	Policy Policy
	// Hostname names this relay in Message-ID.
	Hostname string
	// MaxMessageBytes caps the request body and the message built from
	// it: the relay's SIZE limit.
	MaxMessageBytes int64
	// MaxInFlight bounds the requests read and built at once, since each
	// holds its body in memory (default 16), and MaxInFlightBytes the
	// bytes they declare (Content-Length; the size limit when a request
	// does not say): default 48 MB, three requests of the largest size,
	// about 250 MB of memory at the peak. One account may hold a quarter
	// of each, and always one request of the largest size.
	MaxInFlight      int
	MaxInFlightBytes int64
	// SlotWait is how long a request waits for its account's share or the
	// server's slots before 503 (default DefaultSlotWait).
	SlotWait time.Duration
	// Suppressions is the accounts' suppression list, which the API shows
	// and lifts entries of; nil when the relay keeps none.
	Suppressions Suppressions
	// TrustedProxies, when set, expects a PROXY protocol header (v1 or v2)
	// from each connection, sent by a load balancer in these ranges, and
	// takes the client's address from it (throttles, logs, Received);
	// connections from elsewhere, or without a header, are closed.
	TrustedProxies []netip.Prefix
	// MaxConnections bounds the open connections (default 1000, as SMTP's
	// listeners); more wait in the kernel's backlog.
	MaxConnections int
	// ReadHeaderTimeout bounds a request's header (slowloris), ReadTimeout
	// the whole request, WriteTimeout the answer, IdleTimeout a kept-alive
	// connection between requests.
	ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	Metrics                                                   *Metrics
	Log                                                       *slog.Logger
}

// Defaults: 16,000,000 bytes, 16 and 48 MB in flight, 10s for a header, 5m for a
// request (16 MB at 50 kB/s), 5m to answer, 2m idle.
func (o *Options) Defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.ReadHeaderTimeout, 10*time.Second)
	def(&o.ReadTimeout, 5*time.Minute)
	def(&o.WriteTimeout, 5*time.Minute)
	def(&o.IdleTimeout, 2*time.Minute)
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = 16_000_000
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = 16
	}
	if o.SlotWait == 0 {
		o.SlotWait = DefaultSlotWait
	}
	if o.MaxInFlightBytes == 0 {
		o.MaxInFlightBytes = 3 * o.MaxMessageBytes
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = 1000
	}
	if o.Hostname == "" {
		o.Hostname = "localhost"
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
}

// Server is the API's HTTPS server.
type Server struct {
	o     Options
	http  *http.Server
	ln    net.Listener
	slots *slots
	done  chan error
}

// New checks the options; Start binds the listener.
func New(o Options) (*Server, error) {
	o.Defaults()
	if o.Addr == "" || o.TLS == nil || o.Policy == nil || o.Metrics == nil {
		return nil, errors.New("httpapi: Addr, TLS, Policy and Metrics are required")
	}
	tlsConfig := o.TLS.Clone()
	tlsConfig.MinVersion = max(tlsConfig.MinVersion, tls.VersionTLS12)
	s := &Server{o: o, slots: newSlots(o.MaxInFlight, max(o.MaxInFlightBytes, o.MaxMessageBytes), o.MaxMessageBytes), done: make(chan error, 1)}
	s.http = &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		ReadTimeout:       o.ReadTimeout,
		WriteTimeout:      o.WriteTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(o.Log.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// Start binds the listener and serves until Shutdown.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.o.Addr)
	if err != nil {
		return fmt.Errorf("http api listen on %s: %w", s.o.Addr, err)
	}
	if len(s.o.TrustedProxies) > 0 {
		ln = s.proxied(ln)
	}
	s.ln = netutil.LimitListener(ln, s.o.MaxConnections)
	go func() { s.done <- s.http.ServeTLS(s.ln, "", "") }()
	return nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Shutdown stops taking requests and waits for those under way until ctx
// ends.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	if serveErr := <-s.done; !errors.Is(serveErr, http.ErrServerClosed) {
		err = errors.Join(err, serveErr)
	}
	return err
}

// Handler routes the API's paths, counting every answer by route and
// status.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		defer s.recoverPanic(w, r, start)
		route, status := s.route(w, r)
		s.o.Metrics.observe(route, status, time.Since(start))
	})
}

// recoverPanic answers a request whose handling panicked, and says so in
// the log at error level: net/http would recover it too, but drop the
// connection unanswered and log it where nobody looks. A panic is a bug;
// the client is told to try again, and nothing of the request is logged.
func (s *Server) recoverPanic(w http.ResponseWriter, r *http.Request, start time.Time) {
	v := recover()
	if v == nil {
		return
	}
	if v == http.ErrAbortHandler {
		panic(v)
	}
	s.o.Log.Error("http api: request handling panicked", "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	status := writeError(w, &apiError{code: codeUnavailable, message: "the message was not accepted; try again later", retryAfter: 1})
	s.o.Metrics.observe(routeOther, status, time.Since(start))
}

func (s *Server) route(w http.ResponseWriter, r *http.Request) (string, int) {
	switch r.URL.Path {
	case routeSend:
		return routeSend, s.send(w, r)
	case routeOpenAPI:
		return routeOpenAPI, serveOpenAPI(w, r)
	case routeSuppressions:
		return routeSuppressions, s.suppressionList(w, r)
	}
	if strings.HasPrefix(r.URL.Path, suppressionPrefix) {
		return routeSuppression, s.suppression(w, r)
	}
	return routeOther, writeError(w, newError(codeNotFound, "no such path; see /v1/openapi.json"))
}

func serveOpenAPI(w http.ResponseWriter, r *http.Request) int {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return writeError(w, newError(codeMethodNotAllowed, "use GET"))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(openAPIDocument)
	}
	return http.StatusOK
}

// proxyHeaderTimeout bounds the wait for a PROXY header, which a load
// balancer sends as soon as it has connected.
const proxyHeaderTimeout = 10 * time.Second

// proxied reads the PROXY header of each connection, from trusted peers
// only: any client could otherwise claim any address and step around the
// throttles. A peer outside the ranges is closed at once and the listener
// goes on; a trusted peer must send a header (the protocol's rule: never
// guess whether one is there). The header is read on the connection's own
// goroutine, so a slow one holds up no other.
func (s *Server) proxied(ln net.Listener) net.Listener {
	return &proxyproto.Listener{
		Listener:          ln,
		ReadHeaderTimeout: proxyHeaderTimeout,
		ConnPolicy: func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			if ap, err := netip.ParseAddrPort(o.Upstream.String()); err == nil && trusted(s.o.TrustedProxies, ap.Addr()) {
				return proxyproto.REQUIRE, nil
			}
			s.o.Metrics.refused("proxy_untrusted")
			return proxyproto.REJECT, fmt.Errorf("%w: %s is not a trusted proxy", proxyproto.ErrInvalidUpstream, o.Upstream)
		},
	}
}

func trusted(ranges []netip.Prefix, addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range ranges {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}
