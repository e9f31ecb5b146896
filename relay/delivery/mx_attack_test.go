package delivery

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
)

// Attack (issue 12.7): anyone who may send can name a recipient domain
// whose MX resolves to the relay's own network (the cloud metadata service,
// loopback, a cluster Service) and make direct delivery connect there.
// Special-purpose addresses are never dialled unless allowed, and
// address-literal recipients bounce.
func TestAttackMXToInternalHosts(t *testing.T) {
	d := startDNS(t,
		"metadata.example. 60 IN MX 10 mx.metadata.example.",
		"mx.metadata.example. 60 IN A 169.254.169.254",
		"internal.example. 60 IN MX 10 a.internal.example.",
		"a.internal.example. 60 IN A 10.96.0.1",
		"a.internal.example. 60 IN A 127.0.0.1",
		"a.internal.example. 60 IN A 100.64.1.1",
		"a.internal.example. 60 IN AAAA ::1",
		"a.internal.example. 60 IN AAAA fd00::25",
		"a.internal.example. 60 IN AAAA ::ffff:192.168.1.1",
		"mixed.example. 60 IN MX 10 m.mixed.example.",
		"m.mixed.example. 60 IN A 10.0.0.25",
		"m.mixed.example. 60 IN A 8.8.8.8",
		"noa.example. 60 IN A 192.168.0.10",
	)
	var mu sync.Mutex
	var dialled []string
	m := newMXForTest(t, d, 25, func(c *MXConfig) {
		c.AllowedDestinations = nil
		c.Dial = func(_ context.Context, _, addr string) (net.Conn, error) {
			mu.Lock()
			dialled = append(dialled, addr)
			mu.Unlock()
			return nil, errors.New("test dialer: no network")
		}
	})
	for _, tc := range []struct{ rcpt, enhanced string }{
		{"a@metadata.example", "5.4.4"},
		{"a@internal.example", "5.4.4"},
		{"a@noa.example", "5.4.4"},
		{"a@[10.0.0.5]", "5.7.1"},
		{"a@[IPv6:::1]", "5.7.1"},
	} {
		rs := m.Deliver(ctxFor(t), message("m1", []byte("\r\nhi\r\n"), tc.rcpt))
		if rs[0].Outcome != Failed || rs[0].Enhanced != tc.enhanced {
			t.Errorf("%s: %+v, want failed %s", tc.rcpt, rs[0], tc.enhanced)
		}
	}
	// A domain with one public and one private address: only the public
	// one is tried.
	m.Deliver(ctxFor(t), message("m2", []byte("\r\nhi\r\n"), "a@mixed.example"))
	mu.Lock()
	defer mu.Unlock()
	if len(dialled) != 1 || dialled[0] != "8.8.8.8:25" {
		t.Fatalf("dialled %v, want only the public address 8.8.8.8:25", dialled)
	}
}

func TestSpecialPurpose(t *testing.T) {
	for _, s := range []string{"10.1.2.3", "172.16.0.1", "192.168.1.1", "127.0.0.1", "169.254.169.254", "100.64.0.1",
		"0.0.0.0", "192.0.2.1", "198.18.0.1", "255.255.255.255", "224.0.0.1", "::1", "fe80::1", "fd00::1", "64:ff9b::a00:1", "2001:db8::1", "::"} {
		if !specialPurpose(netip.MustParseAddr(s)) {
			t.Errorf("%s is not special-purpose", s)
		}
	}
	for _, s := range []string{"8.8.8.8", "1.1.1.1", "2606:4700::1111", "100.128.0.1"} {
		if specialPurpose(netip.MustParseAddr(s)) {
			t.Errorf("%s is special-purpose", s)
		}
	}
	m := &MX{cfg: MXConfig{AllowedDestinations: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}}}
	if !m.destinationAllowed(net.ParseIP("10.20.1.1")) || m.destinationAllowed(net.ParseIP("10.21.1.1")) ||
		!m.destinationAllowed(net.ParseIP("::ffff:10.20.1.1")) {
		t.Fatal("allowedDestinations not applied")
	}
}
