package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// DefaultMaxConnectionsPerDomain bounds concurrent sessions to one
	// destination domain (Postfix's default_destination_concurrency_limit).
	DefaultMaxConnectionsPerDomain = 20
	// DefaultMaxMXAddresses bounds the addresses tried for one domain in
	// one attempt (Postfix's smtp_mx_address_limit).
	DefaultMaxMXAddresses = 5
	mxTransport           = "mx"
)

// MXConfig configures direct delivery. Zero values take the defaults.
type MXConfig struct {
	// Hostname is this relay's name, in EHLO and the Received header.
	Hostname string
	// LabelHeader names the account/label header (DefaultLabelHeader).
	LabelHeader string
	// Resolver answers MX and address questions (default: the name servers
	// of /etc/resolv.conf).
	Resolver Resolver
	// Port is where MX hosts listen: 25, the only port real MX hosts use;
	// tests point it elsewhere.
	Port int
	// MaxConnectionsPerDomain bounds concurrent sessions per destination
	// domain; deliveries beyond it wait.
	MaxConnectionsPerDomain int
	// MaxAddresses bounds the MX addresses tried per domain per attempt.
	MaxAddresses   int
	DialTimeout    time.Duration
	CommandTimeout time.Duration
	DataTimeout    time.Duration
	// AllowedDestinations are special-purpose networks (loopback, private,
	// link-local, shared, documentation, ...) that direct delivery may reach
	// all the same, such as an internal mail host. Without them a recipient
	// domain whose MX resolves there is not delivered: anyone who can send
	// could otherwise make the relay connect to the cluster's own services.
	AllowedDestinations []netip.Prefix
	// AllowAddressLiterals delivers to recipients such as user@[192.0.2.1]
	// (still subject to AllowedDestinations); without it they bounce.
	AllowAddressLiterals bool
	// Dial opens connections (default: a net.Dialer).
	Dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	Log     *slog.Logger
	Metrics *Metrics
}

// MX delivers straight to each recipient domain's mail exchangers, with
// opportunistic STARTTLS.
type MX struct {
	cfg   MXConfig
	trace Trace
	log   *slog.Logger

	mu      sync.Mutex
	domains map[string]*domainSlots
}

// domainSlots limits sessions to one domain; it is dropped when unused.
type domainSlots struct {
	sem   chan struct{}
	users int
}

// NewMX returns a direct delivery transport.
func NewMX(cfg MXConfig) (*MX, error) {
	if cfg.Hostname == "" {
		return nil, errors.New("mx delivery: no hostname configured for EHLO")
	}
	if cfg.Resolver == nil {
		r, err := NewSystemResolver()
		if err != nil {
			return nil, fmt.Errorf("mx delivery: %w", err)
		}
		cfg.Resolver = r
	}
	cfg.Port = orDefault(cfg.Port, 25)
	cfg.MaxConnectionsPerDomain = orDefault(cfg.MaxConnectionsPerDomain, DefaultMaxConnectionsPerDomain)
	cfg.MaxAddresses = orDefault(cfg.MaxAddresses, DefaultMaxMXAddresses)
	cfg.DialTimeout = orDefault(cfg.DialTimeout, DefaultDialTimeout)
	cfg.CommandTimeout = orDefault(cfg.CommandTimeout, DefaultCommandTimeout)
	cfg.DataTimeout = orDefault(cfg.DataTimeout, DefaultDataTimeout)
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	return &MX{
		cfg:     cfg,
		trace:   Trace{Hostname: cfg.Hostname, LabelHeader: cfg.LabelHeader},
		log:     cfg.Log.With("transport", mxTransport),
		domains: make(map[string]*domainSlots),
	}, nil
}

// Deliver groups the recipients by domain, delivers to each domain
// concurrently, and returns one Result per recipient in msg's order.
func (m *MX) Deliver(ctx context.Context, msg Message) []Result {
	rcpts := msg.Envelope.To
	results := make([]Result, len(rcpts))
	groups := make(map[string][]int)
	var order []string
	for i, r := range rcpts {
		d := domainOf(r)
		if _, ok := groups[d]; !ok {
			order = append(order, d)
		}
		groups[d] = append(groups[d], i)
	}
	var wg sync.WaitGroup
	for _, d := range order {
		idx := groups[d]
		wg.Go(func() {
			sub := make([]string, len(idx))
			for j, i := range idx {
				sub[j] = rcpts[i]
			}
			for j, r := range m.deliverDomain(ctx, msg, d, sub) {
				results[idx[j]] = r
			}
		})
	}
	wg.Wait()
	return results
}

// domainOf is the lower-cased domain of addr, what MX records are kept for.
func domainOf(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return ""
	}
	return strings.ToLower(strings.TrimSuffix(addr[at+1:], "."))
}

// target is one address to try, with the name it came from.
type target struct {
	host string
	ip   net.IP
}

func (m *MX) deliverDomain(ctx context.Context, msg Message, domain string, rcpts []string) []Result {
	log := m.log.With("id", msg.Envelope.ID, "domain", domain)
	if domain == "" {
		return localResults(rcpts, Failed, "5.1.3", "recipient address has no domain", "")
	}
	release, err := m.acquire(ctx, domain)
	if err != nil {
		return errorResults(rcpts, fmt.Errorf("wait for a session to %s: %w", domain, err), "")
	}
	defer release()

	targets, final := m.route(ctx, domain, rcpts)
	if final != nil {
		log.Info("no route", "outcome", final[0].Outcome.String(), "reason", final[0].Text)
		return final
	}
	t := transaction{
		msg: msg, rcpts: rcpts,
		headers: m.trace.Headers(msg.Envelope, rcpts),
		strip:   m.trace.headerName(),
	}
	var last []Result
	for _, tg := range targets {
		if ctx.Err() != nil {
			break
		}
		c, err := m.connect(ctx, tg)
		if err != nil {
			log.Info("MX host unusable, trying the next", "host", tg.host, "ip", tg.ip.String(), "err", err)
			last = errorResults(rcpts, err, tg.host)
			continue
		}
		results, broken, retryable := c.transact(ctx, t)
		if broken != nil {
			c.conn.Close()
			m.cfg.Metrics.connClosed(mxTransport)
		} else {
			c.quit()
			m.cfg.Metrics.connClosed(mxTransport)
		}
		last = results
		// As Postfix does, a host that defers everything before taking the
		// message leaves the recipients to the next MX host; any other
		// answer is the domain's answer.
		if allDeferred(results) && (broken == nil || retryable) {
			log.Info("MX host deferred every recipient, trying the next", "host", tg.host, "reply", results[0].Text)
			continue
		}
		return results
	}
	if last == nil {
		last = errorResults(rcpts, fmt.Errorf("deliver to %s: %w", domain, context.Cause(ctx)), "")
	}
	return last
}

func allDeferred(rs []Result) bool {
	for _, r := range rs {
		if r.Outcome != Deferred {
			return false
		}
	}
	return true
}

// route finds the addresses to try for domain, in order (RFC 5321 §5.1):
// MX hosts by preference, shuffled within one preference, each host's
// addresses; without MX records the domain's own addresses. final is
// non-nil when the answer decides every recipient's outcome already.
func (m *MX) route(ctx context.Context, domain string, rcpts []string) (targets []target, final []Result) {
	if strings.HasPrefix(domain, "[") && strings.HasSuffix(domain, "]") {
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
	slices.SortFunc(mxs, func(a, b *net.MX) int { return int(a.Pref) - int(b.Pref) })
	shuffleEqualPrefs(mxs)
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
	if !ok {
		return false
	}
	addr = addr.Unmap()
	for _, p := range m.cfg.AllowedDestinations {
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

// connect opens a session to tg with opportunistic STARTTLS, retrying in
// plain text when the handshake fails.
func (m *MX) connect(ctx context.Context, tg target) (*client, error) {
	p := dialParams{
		host:        tg.host,
		addr:        net.JoinHostPort(tg.ip.String(), strconv.Itoa(m.cfg.Port)),
		localName:   m.cfg.Hostname,
		tls:         TLSOpportunistic,
		tlsConfig:   tlsConfig(TLSOpportunistic, tg.host, nil),
		dialTimeout: m.cfg.DialTimeout,
		cmdTimeout:  m.cfg.CommandTimeout,
		dataTimeout: m.cfg.DataTimeout,
		dialContext: m.cfg.Dial,
		onOpened:    func() { m.cfg.Metrics.connOpened(mxTransport) },
		onClosed:    func() { m.cfg.Metrics.connClosed(mxTransport) },
	}
	c, err := dial(ctx, p)
	var se *sessionError
	if err != nil && errors.As(err, &se) && se.tlsFailed {
		p.forcePlain = true
		return dial(ctx, p)
	}
	return c, err
}

// acquire takes one of domain's session slots, waiting until ctx ends.
func (m *MX) acquire(ctx context.Context, domain string) (release func(), err error) {
	m.mu.Lock()
	ds := m.domains[domain]
	if ds == nil {
		ds = &domainSlots{sem: make(chan struct{}, m.cfg.MaxConnectionsPerDomain)}
		m.domains[domain] = ds
	}
	ds.users++
	m.mu.Unlock()
	done := func() {
		m.mu.Lock()
		ds.users--
		if ds.users == 0 {
			delete(m.domains, domain)
		}
		m.mu.Unlock()
	}
	select {
	case ds.sem <- struct{}{}:
		return func() { <-ds.sem; done() }, nil
	case <-ctx.Done():
		done()
		return nil, ctx.Err()
	}
}
