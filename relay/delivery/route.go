package delivery

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// target is one address to try, with the name it came from.
type target struct {
	host string
	ip   net.IP
}

// route finds the addresses to try for domain, in order (RFC 5321 §5.1):
// MX hosts by preference, shuffled within one preference, each host's
// addresses; without MX records the domain's own addresses. final is
// non-nil when the answer decides every recipient's outcome already.
func (m *MX) route(ctx context.Context, domain string, rcpts []string) (targets []target, final []Result) {
	if strings.HasPrefix(domain, "[") && strings.HasSuffix(domain, "]") {
		return m.literalRoute(domain, rcpts)
	}
	mxs, err := m.cfg.Resolver.LookupMX(ctx, domain)
	if err != nil {
		if errors.Is(err, ErrNoSuchDomain) {
			return nil, localResults(rcpts, Failed, "5.1.2", "recipient domain "+domain+" does not exist: "+err.Error(), "")
		}
		// SERVFAIL and timeouts say nothing about the domain; try later.
		return nil, localResults(rcpts, Deferred, "4.4.3", err.Error(), "")
	}
	if len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == "") {
		return nil, localResults(rcpts, Failed, "5.1.10", "recipient domain "+domain+" accepts no mail (null MX, RFC 7505)", "")
	}
	if len(mxs) == 0 {
		return m.addressRoute(ctx, domain, rcpts)
	}
	return m.mxRoute(ctx, domain, mxs, rcpts)
}

// literalRoute is the route to an address-literal domain such as
// [192.0.2.1], when they are allowed at all.
func (m *MX) literalRoute(domain string, rcpts []string) ([]target, []Result) {
	if !m.cfg.AllowAddressLiterals {
		return nil, localResults(rcpts, Failed, "5.7.1", "address-literal recipients are not delivered directly: "+domain, "")
	}
	lit := strings.TrimPrefix(domain[1:len(domain)-1], "ipv6:")
	ip := net.ParseIP(lit)
	if ip == nil {
		return nil, localResults(rcpts, Failed, "5.1.2", "bad address literal "+domain, "")
	}
	return m.reachable(domain, []target{{host: domain, ip: ip}}, rcpts)
}

// addressRoute is the route to a domain without MX records: its own
// addresses (RFC 5321 §5.1's implicit MX).
func (m *MX) addressRoute(ctx context.Context, domain string, rcpts []string) ([]target, []Result) {
	ips, err := m.cfg.Resolver.LookupIP(ctx, domain)
	switch {
	case errors.Is(err, ErrNoSuchDomain):
		return nil, localResults(rcpts, Failed, "5.1.2", "recipient domain "+domain+" does not exist: "+err.Error(), "")
	case err != nil:
		return nil, localResults(rcpts, Deferred, "4.4.3", err.Error(), "")
	case len(ips) == 0:
		return nil, localResults(rcpts, Failed, "5.4.4", "recipient domain "+domain+" has neither MX nor address records", "")
	}
	return m.reachable(domain, targetsFor(domain, ips), rcpts)
}

// mxRoute is the route through domain's MX hosts.
func (m *MX) mxRoute(ctx context.Context, domain string, mxs []*net.MX, rcpts []string) ([]target, []Result) {
	slices.SortFunc(mxs, func(a, b *net.MX) int { return int(a.Pref) - int(b.Pref) })
	shuffleEqualPrefs(mxs)
	var targets []target
	var lookupErr error
	for _, mx := range mxs {
		host := strings.TrimSuffix(mx.Host, ".")
		if host == "" {
			// A null MX among real ones is a misconfiguration; skip it.
			continue
		}
		ips, err := m.cfg.Resolver.LookupIP(ctx, host)
		if err != nil {
			lookupErr = err
			continue
		}
		targets = append(targets, targetsFor(host, ips)...)
	}
	if len(targets) == 0 {
		// The MX hosts' own records may be fixed soon; an MX pointing at
		// nothing is not the recipient's final answer.
		reason := "no MX host of " + domain + " has an address"
		if lookupErr != nil {
			reason += ": " + lookupErr.Error()
		}
		return nil, localResults(rcpts, Deferred, "4.4.4", reason, "")
	}
	return m.reachable(domain, targets, rcpts)
}

// reachable drops targets in special-purpose networks that are not allowed
// and limits the rest; with none left, the recipients bounce.
func (m *MX) reachable(domain string, ts []target, rcpts []string) ([]target, []Result) {
	kept := ts[:0:0]
	for _, t := range ts {
		if m.destinationAllowed(t.ip) {
			kept = append(kept, t)
		}
	}
	if len(kept) == 0 {
		return nil, localResults(rcpts, Failed, "5.4.4", "the mail exchangers of "+domain+" are in special-purpose networks that direct delivery does not reach", "")
	}
	return m.limit(kept), nil
}

// destinationAllowed: a public unicast address, or one in an allowed network.
func (m *MX) destinationAllowed(ip net.IP) bool {
	addr, ok := netip.AddrFromSlice(ip)
	return ok && DestinationAllowed(addr, m.cfg.AllowedDestinations)
}

// DestinationAllowed reports whether the relay may connect to addr on
// behalf of a sender: a public unicast address, or one inside allowed.
// Direct MX delivery and webhooks share it, so that neither reaches the
// cluster's own services unless the configuration says so.
func DestinationAllowed(addr netip.Addr, allowed []netip.Prefix) bool {
	addr = addr.Unmap()
	for _, p := range allowed {
		if p.Contains(addr) {
			return true
		}
	}
	return !specialPurpose(addr)
}

// specialNetworks are the IANA special-purpose ranges not caught by
// netip.Addr's own predicates.
var specialNetworks = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // shared address space (CGNAT)
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, and broadcast
	netip.MustParsePrefix("64:ff9b::/96"),    // NAT64: reaches IPv4 behind it
	netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64
	netip.MustParsePrefix("100::/64"),        // discard
	netip.MustParsePrefix("2001::/23"),       // IETF protocol assignments
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("2002::/16"),       // 6to4: embeds an IPv4 address
}

func specialPurpose(a netip.Addr) bool {
	if a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsMulticast() ||
		a.IsUnspecified() || a.IsInterfaceLocalMulticast() || a.IsLinkLocalMulticast() {
		return true
	}
	for _, p := range specialNetworks {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (m *MX) limit(ts []target) []target {
	if len(ts) > m.cfg.MaxAddresses {
		return ts[:m.cfg.MaxAddresses]
	}
	return ts
}

func targetsFor(host string, ips []net.IP) []target {
	out := make([]target, 0, len(ips))
	for _, ip := range ips {
		out = append(out, target{host: host, ip: ip})
	}
	return out
}

// shuffleEqualPrefs randomizes hosts of equal preference, as RFC 5321 §5.1
// asks, so senders spread over them.
func shuffleEqualPrefs(mxs []*net.MX) {
	for i := 0; i < len(mxs); {
		j := i + 1
		for j < len(mxs) && mxs[j].Pref == mxs[i].Pref {
			j++
		}
		group := mxs[i:j]
		rand.Shuffle(len(group), func(a, b int) { group[a], group[b] = group[b], group[a] })
		i = j
	}
}
