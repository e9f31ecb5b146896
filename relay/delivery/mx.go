package delivery

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mailfleet/mailfleet/relay/mtasts"
	"github.com/mailfleet/mailfleet/relay/shaping"
	"github.com/mailfleet/mailfleet/relay/smtpclient"
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
	// TLSPolicies set the TLS of destination domains (and their
	// subdomains): smtpclient.TLSEncrypt never sends them mail in plain
	// text, TLSRequired also verifies the certificate for the MX host.
	TLSPolicies map[string]smtpclient.TLSMode
	// GroupTLS sets the TLS of the destination groups (ShapingRules) by
	// name, for the domains a group takes in by their MX hosts.
	GroupTLS map[string]smtpclient.TLSMode
	// RootCAs verify MX hosts' certificates where a policy requires it
	// (nil: the system's).
	RootCAs *x509.CertPool
	// MTASTS honours the destinations' MTA-STS policies (RFC 8461),
	// looked up with Resolver when it answers TXT questions too.
	MTASTS bool
	// MTASTSRoots verify the hosts policies are fetched from (nil: the
	// system's).
	MTASTSRoots *x509.CertPool
	// Shaper keeps the destination groups of ShapingRules within their
	// fleet-wide limits (relay/shaping); nil: only the per-pod limits.
	Shaper       Shaper
	ShapingRules shaping.Rules
}

// Shaper is what direct delivery asks before a session to a destination
// group, and tells after it (a *shaping.Fleet).
type Shaper interface {
	Acquire(ctx context.Context, g shaping.Rule) (release func(), err error)
	Pause(ctx context.Context, g shaping.Rule, reason string)
	Delivered(ctx context.Context, g shaping.Rule)
}

// MX delivers straight to each recipient domain's mail exchangers, with
// opportunistic STARTTLS.
type MX struct {
	cfg   MXConfig
	trace Trace
	log   *slog.Logger

	domains *DomainLimiter
	// mtasts finds MTA-STS policies; nil when they are not honoured.
	mtasts *mtasts.Finder
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
	sessionDefaults(&cfg.DialTimeout, &cfg.CommandTimeout, &cfg.DataTimeout, &cfg.Log)
	m := &MX{
		cfg:     cfg,
		trace:   Trace{Hostname: cfg.Hostname, LabelHeader: cfg.LabelHeader},
		log:     cfg.Log.With("transport", mxTransport),
		domains: NewDomainLimiter(cfg.MaxConnectionsPerDomain),
	}
	if txt, ok := cfg.Resolver.(mtasts.TXTResolver); ok && cfg.MTASTS {
		m.mtasts = mtasts.New(mtasts.Config{DNS: txt, IsNotFound: IsNotFound, Dial: m.dialPublic,
			RootCAs: cfg.MTASTSRoots, Timeout: min(cfg.CommandTimeout, mtastsFetchTimeout)})
	}
	return m, nil
}

// mtastsFetchTimeout bounds a policy fetch: the SMTP command timeout
// (minutes, as RFC 5321 asks) is far too long to hold a delivery for a
// web server that does not answer; RFC 8461 §3.3 suggests about a minute
// at most, and a slow policy host is treated as no policy.
const mtastsFetchTimeout = 10 * time.Second

// dialPublic dials a host name as direct delivery reaches MX hosts: its
// addresses from the resolver, special-purpose ones refused unless
// allowed. An MTA-STS policy host is named by whoever writes the
// recipient domain's DNS, which must not make the relay fetch from the
// cluster's own services.
func (m *MX) dialPublic(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ips, err := m.cfg.Resolver.LookupIP(ctx, host)
	if err != nil {
		return nil, err
	}
	dial := m.cfg.Dial
	if dial == nil {
		dial = (&net.Dialer{Timeout: m.cfg.DialTimeout}).DialContext
	}
	var errs []error
	for _, ip := range ips {
		if !m.destinationAllowed(ip) {
			errs = append(errs, fmt.Errorf("%s is a special-purpose address", ip))
			continue
		}
		conn, err := dial(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("dial %s: %w", host, errors.Join(append(errs, errors.New("no usable address"))...))
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

func (m *MX) deliverDomain(ctx context.Context, msg Message, domain string, rcpts []string) []Result {
	log := m.log.With("id", msg.Envelope.ID, "domain", domain)
	if domain == "" {
		return localResults(rcpts, Failed, "5.1.3", "recipient address has no domain", "")
	}
	release, err := m.domains.Acquire(ctx, domain)
	if err != nil {
		return errorResults(rcpts, fmt.Errorf("wait for a session to %s: %w", domain, err), "")
	}
	defer release()

	targets, final := m.route(ctx, domain, rcpts)
	if final != nil {
		log.Info("no route", "outcome", final[0].Outcome.String(), "reason", final[0].Text)
		return final
	}
	group, shaped := m.shapingGroup(domain, targets)
	policy, targets, final := m.tlsPolicyFor(ctx, domain, group.Name, targets, rcpts)
	if final != nil {
		log.Info("no route the destination's TLS policy allows", "reason", final[0].Text)
		return final
	}
	t := transaction{
		msg: msg, rcpts: rcpts,
		headers: m.trace.Headers(msg.Envelope, rcpts),
		strip:   m.trace.headerName(),
	}
	if !shaped || m.cfg.Shaper == nil {
		return m.tryTargets(ctx, log, domain, targets, t, policy)
	}
	releaseSlot, err := m.cfg.Shaper.Acquire(ctx, group)
	if err != nil {
		if d, ok := errors.AsType[*shaping.Deferral](err); ok {
			m.cfg.Metrics.shaped(group.Name)
			return localResults(rcpts, Deferred, d.Enhanced, d.Text, "")
		}
		return errorResults(rcpts, fmt.Errorf("wait for a session to %s: %w", group.Name, err), "")
	}
	defer releaseSlot()
	results := m.tryTargets(ctx, log, domain, targets, t, policy)
	m.observe(ctx, log, group, results)
	return results
}

// shapingGroup is the destination group whose fleet-wide limits apply to
// domain, reached through targets; false when none does.
func (m *MX) shapingGroup(domain string, targets []target) (shaping.Rule, bool) {
	hosts := make([]string, len(targets))
	for i, tg := range targets {
		hosts[i] = tg.host
	}
	return m.cfg.ShapingRules.For(domain, hosts)
}

// observe pauses a group that answered 421 (its servers say they are
// overloaded, or that this sender is sending too much), for the whole
// fleet: other relays would only add to it. A delivery ends the series.
func (m *MX) observe(ctx context.Context, log *slog.Logger, g shaping.Rule, results []Result) {
	for _, r := range results {
		if r.Code == 421 {
			log.Warn("destination answered 421; pausing its group", "group", g.Name, "reply", r.Text)
			m.cfg.Shaper.Pause(ctx, g, fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text))
			return
		}
	}
	for _, r := range results {
		if r.Outcome == Delivered {
			m.cfg.Shaper.Delivered(ctx, g)
			return
		}
	}
}

// tryTargets offers t to each target in turn until one gives the domain's
// answer. As Postfix does, a host that cannot be reached, or defers every
// recipient before taking the message, leaves them to the next; any other
// answer is the domain's.
func (m *MX) tryTargets(ctx context.Context, log *slog.Logger, domain string, targets []target, t transaction, policy tlsPolicy) []Result {
	var last []Result
	for _, tg := range targets {
		if ctx.Err() != nil {
			break
		}
		c, err := m.connect(ctx, tg, policy.mode)
		if err != nil {
			log.Info("MX host unusable, trying the next", "host", tg.host, "ip", tg.ip.String(), "err", err)
			last = errorResults(t.rcpts, err, tg.host)
			continue
		}
		results, broken, retryable := transact(ctx, c, t, false)
		if broken != nil {
			c.Close()
		} else {
			c.Quit()
		}
		results = withTLS(results, c.TLS(), policy.source)
		last = results
		if allDeferred(results) && (broken == nil || retryable) {
			log.Info("MX host deferred every recipient, trying the next", "host", tg.host, "reply", results[0].Text)
			continue
		}
		return results
	}
	if last == nil {
		last = errorResults(t.rcpts, fmt.Errorf("deliver to %s: %w", domain, context.Cause(ctx)), "")
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

// connect opens a session to tg with the destination's TLS mode: with
// opportunistic STARTTLS, smtpclient retries in plain text when the
// handshake fails; the other modes fail the session instead.
func (m *MX) connect(ctx context.Context, tg target, mode smtpclient.TLSMode) (*smtpclient.Client, error) {
	return smtpclient.Dial(ctx, smtpclient.Params{
		Host:           tg.host,
		Addr:           net.JoinHostPort(tg.ip.String(), strconv.Itoa(m.cfg.Port)),
		LocalName:      m.cfg.Hostname,
		TLS:            mode,
		RootCAs:        m.cfg.RootCAs,
		ServerName:     tg.host,
		DialTimeout:    m.cfg.DialTimeout,
		CommandTimeout: m.cfg.CommandTimeout,
		DataTimeout:    m.cfg.DataTimeout,
		Dial:           m.cfg.Dial,
		OnOpened:       func() { m.cfg.Metrics.connOpened(mxTransport) },
		OnClosed:       func() { m.cfg.Metrics.connClosed(mxTransport) },
	})
}
