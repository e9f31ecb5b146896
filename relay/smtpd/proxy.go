package smtpd

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pires/go-proxyproto"
)

// proxyHeaderTimeout bounds the wait for the PROXY header, which a load
// balancer sends as soon as it has connected.
const proxyHeaderTimeout = 10 * time.Second

// Refusal reasons of connections on a PROXY protocol listener, values of
// mailfleet_relay_connections_refused_total{reason}.
const (
	refusedProxyUntrusted = "proxy_untrusted"
	refusedProxyHeader    = "proxy_header"
)

var errUntrustedProxy = errors.New("not from a trusted proxy")

// admitProxied reads the PROXY header (v1 or v2) of a connection on a
// listener behind a load balancer, then admits it as coming from the client
// the header names, so per-address limits, logs and the Received header see
// that client rather than the balancer. It runs on a goroutine of its own:
// a header that is slow to come must not hold up the next connection.
//
// Only a peer in the listener's trusted ranges may send a header, and it
// must (the protocol's rule: never guess whether one is there); anything
// else is closed without a reply. Otherwise any client could claim any
// address and step around the throttles.
func (s *Server) admitProxied(l Listener, conn net.Conn) {
	defer s.wg.Done()
	pc, err := s.readProxyHeader(l, conn)
	if err != nil {
		reason := refusedProxyHeader
		if errors.Is(err, errUntrustedProxy) {
			reason = refusedProxyUntrusted
		}
		s.deps.Metrics.refused.WithLabelValues(reason).Inc()
		s.deps.Log.Warn("connection closed: PROXY protocol", "listener", l.Name, "peer", conn.RemoteAddr().String(), "err", err)
		conn.Close()
		return
	}
	s.admit(l, pc)
}

func (s *Server) readProxyHeader(l Listener, conn net.Conn) (*proxiedConn, error) {
	peer, ok := tcpAddr(conn.RemoteAddr())
	if !ok || !trusted(peer, l.TrustedProxies) {
		return nil, errUntrustedProxy
	}
	if !s.headers.add(conn, time.Now().Add(proxyHeaderTimeout)) {
		return nil, errors.New("server shutting down")
	}
	defer s.headers.done(conn)
	br := bufio.NewReader(conn)
	h, err := proxyproto.Read(br)
	if err != nil {
		return nil, fmt.Errorf("read PROXY header: %w", err)
	}
	pc := &proxiedConn{Conn: conn, r: br, client: conn.RemoteAddr(), proxy: conn.RemoteAddr()}
	// LOCAL is the balancer's own connection (a health check), and an
	// UNKNOWN or non-TCP source has no client address to use: the spec
	// says to use the connection's own then.
	if src, ok := h.SourceAddr.(*net.TCPAddr); ok && h.Command.IsProxy() {
		pc.client = src
	}
	return pc, nil
}

func tcpAddr(a net.Addr) (netip.Addr, bool) {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	return tcp.AddrPort().Addr().Unmap(), true
}

func trusted(ip netip.Addr, ranges []netip.Prefix) bool {
	for _, p := range ranges {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// proxiedConn is a connection from a load balancer, seen as coming from the
// client its PROXY header names.
type proxiedConn struct {
	net.Conn
	r      *bufio.Reader // holds what arrived behind the header; nil once drained
	client net.Addr
	proxy  net.Addr
}

func (c *proxiedConn) Read(p []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(p)
		}
		c.r = nil
	}
	return c.Conn.Read(p)
}

func (c *proxiedConn) RemoteAddr() net.Addr { return c.client }

// headerWaits are the connections whose PROXY header is awaited, so that
// Shutdown can cut the wait short instead of sitting out the timeout.
type headerWaits struct {
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	stopped bool
}

// add sets conn's deadline for its header and tracks it; false once stopped.
// The deadline is set under the lock so that stop's cannot be overwritten.
func (w *headerWaits) add(conn net.Conn, deadline time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return false
	}
	if w.conns == nil {
		w.conns = map[net.Conn]struct{}{}
	}
	w.conns[conn] = struct{}{}
	conn.SetReadDeadline(deadline)
	return true
}

func (w *headerWaits) done(conn net.Conn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.conns, conn)
	if !w.stopped {
		conn.SetReadDeadline(time.Time{})
	}
}

func (w *headerWaits) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	for c := range w.conns {
		c.SetDeadline(time.Now())
	}
}
