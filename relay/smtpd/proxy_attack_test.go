package smtpd_test

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/relay/delivery"
	"github.com/mailfleet/mailfleet/relay/smtpd"
)

// The load balancer in these tests is 127.0.0.1, the only trusted proxy;
// 127.0.0.2 stands for anyone else who reaches the port.
var (
	trustedLB   = netip.MustParseAddr("127.0.0.1")
	untrustedLB = netip.MustParseAddr("127.0.0.2")
)

// withProxyListeners adds "lb" (clear text, AUTH allowed without TLS) and
// "lbs" (implicit TLS), both behind the PROXY protocol from trustedLB.
func withProxyListeners(s *relaySpec) {
	trusted := []netip.Prefix{netip.PrefixFrom(trustedLB, 32)}
	s.server.Listeners = append(s.server.Listeners,
		smtpd.Listener{Name: "lb", Addr: "127.0.0.1:0", AllowAuthWithoutTLS: true, ProxyProtocol: true, TrustedProxies: trusted},
		smtpd.Listener{Name: "lbs", Addr: "127.0.0.1:0", ImplicitTLS: true, ProxyProtocol: true, TrustedProxies: trusted})
}

// proxyV1 is a PROXY protocol v1 line, written by hand from the spec
// rather than by the library under test.
func proxyV1(client string, port int) []byte {
	return fmt.Appendf(nil, "PROXY TCP4 %s 127.0.0.1 %d 25\r\n", client, port)
}

// proxyV2 is a binary v2 header: PROXY over TCP/IPv4, or LOCAL (a
// balancer's health check) with no address.
func proxyV2(client string, port int, local bool) []byte {
	b := []byte("\r\n\r\n\x00\r\nQUIT\n")
	if local {
		return append(b, 0x20, 0x00, 0, 0)
	}
	b = append(b, 0x21, 0x11, 0, 12)
	src, dst := netip.MustParseAddr(client).As4(), trustedLB.As4()
	b = append(append(b, src[:]...), dst[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(port))
	return binary.BigEndian.AppendUint16(b, 25)
}

// dialFrom connects to addr from the local address from and sends header.
func dialFrom(t *testing.T, from netip.Addr, addr string, header []byte) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: from.AsSlice()}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.Write(header); err != nil {
		t.Fatal(err)
	}
	return conn
}

// viaLB opens a session through the trusted balancer for client.
func viaLB(t *testing.T, env *relayEnv, header []byte) *rawClient {
	t.Helper()
	c := newRawClient(t, dialFrom(t, trustedLB, env.addr("lb"), header))
	if got := c.reply(); !strings.HasPrefix(got, "220 ") {
		t.Fatalf("greeting through the balancer: %q", got)
	}
	return c
}

// expectClosed checks that the relay closes conn without a byte.
func expectClosed(t *testing.T, conn net.Conn, what string) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(conn)
	if len(got) > 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: got %q, %v; want the connection closed without a reply", what, got, err)
	}
}

func refusedCount(env *relayEnv, reason string) float64 {
	return env.metric("mailfleet_relay_connections_refused_total", map[string]string{"reason": reason})
}

// TestAttackProxyHeaderFromUntrustedSource: anyone who reaches a PROXY
// protocol listener directly could claim any client address and so step
// around every per-address limit. A header from outside trustedProxies is
// never read: the connection is closed.
func TestAttackProxyHeaderFromUntrustedSource(t *testing.T) {
	env := startRelay(t, withProxyListeners)
	for i, header := range [][]byte{proxyV1("203.0.113.7", 40000), proxyV2("203.0.113.7", 40000, false), []byte("EHLO client.test\r\n")} {
		conn := dialFrom(t, untrustedLB, env.addr("lb"), header)
		expectClosed(t, conn, fmt.Sprintf("header %d from %s", i, untrustedLB))
	}
	if n := refusedCount(env, "proxy_untrusted"); n != 3 {
		t.Fatalf("refused as untrusted: %v, want 3", n)
	}
}

// TestAttackProxyListenerWithoutHeader: the trusted balancer's connections
// must carry a header; the relay never guesses (a client whose first line
// happened to look like one could otherwise pick its own address).
func TestAttackProxyListenerWithoutHeader(t *testing.T) {
	env := startRelay(t, withProxyListeners)
	for _, first := range []string{"EHLO client.test\r\n", "PROXY TCP4 203.0.113.7\r\n", "PROXY UDP4 203.0.113.7 127.0.0.1 1 2\r\n"} {
		expectClosed(t, dialFrom(t, trustedLB, env.addr("lb"), []byte(first)), fmt.Sprintf("%q from the balancer", first))
	}
	if n := refusedCount(env, "proxy_header"); n != 3 {
		t.Fatalf("refused for their header: %v, want 3", n)
	}
}

// TestAttackProxyLineOnPlainListener: a listener without proxyProtocol
// never parses a header, so a client cannot pick its address there: the
// PROXY line is an unknown command, and the session stays the socket's.
func TestAttackProxyLineOnPlainListener(t *testing.T) {
	env := startRelay(t, withProxyListeners)
	c := dialRaw(t, env.addr("smtp"))
	c.reply()
	c.expect(strings.TrimSuffix(string(proxyV1("203.0.113.7", 40000)), "\r\n"), "500 5.5.2 Command not recognized")
	c.expectPrefix("EHLO client.test", "250")
	c.expect("AUTH PLAIN "+b64("\x00"+userMain+"\x00"+env.keys[userMain]), "235 2.7.0 Authentication successful")
	c.send("a@ifaxin.com", "b@example.com", "Subject: plain\r\n\r\nhi\r\n")
	for _, m := range env.stored() {
		if !strings.HasPrefix(m.Env.RemoteAddr, "127.0.0.1:") {
			t.Fatalf("client address %q, want the socket's 127.0.0.1", m.Env.RemoteAddr)
		}
	}
}

// TestAttackProxyClientsShareNoAuthFailures: behind one balancer, each
// client the headers name (v1 or v2) has its own failure count: one client
// guessing keys shuts out itself, not every client of the balancer.
func TestAttackProxyClientsShareNoAuthFailures(t *testing.T) {
	env := startRelay(t, withProxyListeners, func(s *relaySpec) { s.policy.AuthFailureLimit = 2 })
	bad := "AUTH PLAIN " + b64("\x00"+userMain+"\x00wrong")
	throttled := "421 4.7.0 mx.test Too many authentication failures, try again later"
	guesser := viaLB(t, env, proxyV1("203.0.113.7", 40000))
	guesser.expectPrefix("EHLO client.test", "250")
	guesser.expect(bad, "535 5.7.8 Authentication credentials invalid")
	guesser.expect(bad, "535 5.7.8 Authentication credentials invalid")
	guesser.expect(bad, throttled)

	other := viaLB(t, env, proxyV2("198.51.100.9", 40001, false))
	other.expectPrefix("EHLO client.test", "250")
	other.expect(bad, "535 5.7.8 Authentication credentials invalid")

	again := viaLB(t, env, proxyV2("203.0.113.7", 40002, false))
	again.expectPrefix("EHLO client.test", "250")
	again.expect(bad, throttled)
}

// TestAttackProxyClientsShareNoConnectionCap: the per-client session cap
// counts the clients the headers name, not the balancer.
func TestAttackProxyClientsShareNoConnectionCap(t *testing.T) {
	env := startRelay(t, withProxyListeners, func(s *relaySpec) { s.server.MaxConnectionsPerClient = 1 })
	viaLB(t, env, proxyV1("203.0.113.7", 40000))
	second := newRawClient(t, dialFrom(t, trustedLB, env.addr("lb"), proxyV1("203.0.113.7", 40001)))
	if got := second.reply(); got != "421 4.7.0 mx.test Too many connections from your address, try again later" {
		t.Fatalf("second session of 203.0.113.7: %q", got)
	}
	viaLB(t, env, proxyV2("198.51.100.9", 40002, false))
}

// TestProxyProtocolClientAddress: the client the header names is the one
// the stored envelope, and so the Received header, records, over clear
// text (v1) and implicit TLS (v2, the ClientHello right behind the
// header); a LOCAL header (a health check) keeps the balancer's address.
func TestProxyProtocolClientAddress(t *testing.T) {
	env := startRelay(t, withProxyListeners)
	c := viaLB(t, env, proxyV1("203.0.113.7", 40000))
	c.cmd("EHLO client.test")
	c.expect("AUTH PLAIN "+b64("\x00"+userMain+"\x00"+env.keys[userMain]), "235 2.7.0 Authentication successful")
	if got := c.send("a@ifaxin.com", "v1@example.com", "Subject: v1\r\n\r\nhi\r\n"); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("through v1: %q", got)
	}

	raw := dialFrom(t, trustedLB, env.addr("lbs"), proxyV2("198.51.100.9", 40001, false))
	tc := newRawClient(t, tls.Client(raw, env.clientTLS()))
	tc.login(userMain, env.keys[userMain])
	if got := tc.send("a@ifaxin.com", "v2@example.com", "Subject: v2\r\n\r\nhi\r\n"); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("through v2 and TLS: %q", got)
	}

	local := viaLB(t, env, proxyV2("", 0, true))
	local.cmd("EHLO health.check")
	local.expect("AUTH PLAIN "+b64("\x00"+userMain+"\x00"+env.keys[userMain]), "235 2.7.0 Authentication successful")
	local.send("a@ifaxin.com", "local@example.com", "Subject: local\r\n\r\nhi\r\n")

	want := map[string]string{
		"v1@example.com":    "Received: from client.test ([203.0.113.7])",
		"v2@example.com":    "Received: from client.test ([198.51.100.9])",
		"local@example.com": "Received: from health.check ([127.0.0.1])",
	}
	stored := env.stored()
	if len(stored) != len(want) {
		t.Fatalf("%d messages stored, want %d", len(stored), len(want))
	}
	for _, m := range stored {
		h := delivery.Trace{Hostname: "mx.test"}.Headers(m.Env, m.Env.To)
		if w := want[m.Env.To[0]]; !bytes.HasPrefix(h, []byte(w)) {
			t.Fatalf("message to %s: trace headers %q, want them to start %q", m.Env.To[0], h, w)
		}
	}
}
