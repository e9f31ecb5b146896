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
	// SessionIdle is how long a session kept open for a group's next
	// message waits for one (default DefaultSessionIdle).
	SessionIdle time.Duration
}

// Shaper is what direct delivery asks before a session to a destination
// group, and tells after it (a *shaping.Fleet).
type Shaper interface {
	// Admit counts one message to g, or says (a *shaping.Deferral) why
	// it must wait; Slot holds one of g's sessions until release.
	Admit(ctx context.Context, g shaping.Rule) error
	Slot(ctx context.Context, g shaping.Rule) (release func(), err error)
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
	// idle are sessions kept open for the next message to their host,
	// for groups that carry more than one message per session.
	idle *idleSessions
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
		idle:    newIdleSessions(orDefault(cfg.SessionIdle, DefaultSessionIdle)),
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
		return m.tryTargets(ctx, log, domain, targets, t, policy, nil)
	}
	if err := m.cfg.Shaper.Admit(ctx, group); err != nil {
		if rs, ok := m.shapingDeferred(err, group.Name, rcpts); ok {
			return rs
		}
		return errorResults(rcpts, fmt.Errorf("wait for a session to %s: %w", group.Name, err), "")
	}
	results := m.tryTargets(ctx, log, domain, targets, t, policy, &group)
	m.observe(ctx, log, group, results)
	return results
}

// shapingDeferred is rcpts deferred when err is the fleet's shaping of
// group holding their delivery back.
func (m *MX) shapingDeferred(err error, group string, rcpts []string) ([]Result, bool) {
	d, ok := errors.AsType[*shaping.Deferral](err)
	if !ok {
		return nil, false
	}
	m.cfg.Metrics.shaped(group)
	return localResults(rcpts, Deferred, d.Enhanced, d.Text, ""), true
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
// answer is the domain's. g is the destination group whose slots the
// sessions take, nil for none.
func (m *MX) tryTargets(ctx context.Context, log *slog.Logger, domain string, targets []target, t transaction, policy tlsPolicy, g *shaping.Rule) []Result {
	var last []Result
	group := groupName(g)
	for _, tg := range targets {
		if ctx.Err() != nil {
			break
		}
		s, err := m.session(ctx, tg, policy.mode, g)
		if rs, ok := m.shapingDeferred(err, group, t.rcpts); ok {
			return rs
		}
		if err != nil {
			log.Info("MX host unusable, trying the next", "host", tg.host, "ip", tg.ip.String(), "err", err)
			last = errorResults(t.rcpts, err, tg.host)
			continue
		}
		m.cfg.Metrics.offered(mxTransport, s.reused)
		results, broken, retryable := transact(ctx, s.c, t, s.reused)
		if broken != nil && s.reused && retryable && ctx.Err() == nil {
			// The host closed the session while it waited: this message
			// goes on a new one, as if the old had not been there.
			log.Info("kept session was closed by the host, opening another", "host", tg.host, "err", broken)
			s.close(false)
			if s, err = m.session(ctx, tg, policy.mode, g); err != nil {
				if rs, ok := m.shapingDeferred(err, group, t.rcpts); ok {
					return rs
				}
				last = errorResults(t.rcpts, err, tg.host)
				continue
			}
			results, broken, retryable = transact(ctx, s.c, t, s.reused)
		}
		// Before finish: a kept session may be taken by another delivery.
		results = withTLS(results, s.c.TLS(), policy.source)
		m.finish(s, g, results, broken)
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

// session is an idle session to tg when g keeps them, else a new one
// holding one of g's slots.
func (m *MX) session(ctx context.Context, tg target, mode smtpclient.TLSMode, g *shaping.Rule) (*mxSession, error) {
	group := groupName(g)
	release := func() {}
	// The group is part of the key: a session holds a slot of its own
	// group, and must not carry another group's mail to a host they share.
	key := group + "|" + tg.host + "|" + tg.ip.String() + "|" + mode.String()
	if g != nil {
		var s *mxSession
		var err error
		if s, release, err = m.sessionOrSlot(ctx, key, *g); s != nil || err != nil {
			return s, err
		}
	}
	c, err := m.connect(ctx, tg, mode)
	if err != nil {
		release()
		return nil, err
	}
	s := &mxSession{c: c, key: key, group: group, release: release}
	m.idle.opened(s)
	return s, nil
}

// groupName is g's name, "" for no group.
func groupName(g *shaping.Rule) string {
	if g == nil {
		return ""
	}
	return g.Name
}

// evictAfter is how long a delivery waits for a slot of its group before
// it closes a session its relay keeps idle to another of the group's hosts.
const evictAfter = 20 * time.Millisecond

// sessionOrSlot waits for a session kept open for key or a slot of g,
// whichever comes first. A delivery waiting for a slot while its own
// relay's sessions to the host are all busy must see one of them come
// free: otherwise it would wait for a slot the kept session holds until
// that session's idle time ran out. Ending the wait for the slot is safe
// at any moment: a slot taken all the same is given back.
func (m *MX) sessionOrSlot(ctx context.Context, key string, g shaping.Rule) (*mxSession, func(), error) {
	if g.Limits.MaxMessagesPerConnection <= 1 {
		release, err := m.cfg.Shaper.Slot(ctx, g)
		return nil, release, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, w := m.idle.takeOrWait(key, cancel)
	if s != nil {
		return s, nil, nil
	}
	// A session idle to another of the group's hosts may hold the slot
	// this one needs: when none comes at once, close one of those.
	// (Closing one up front would end kept sessions while slots are
	// free, whenever the group's mail goes to more than one host.)
	evict := time.AfterFunc(evictAfter, func() { m.idle.evict(g.Name, key) })
	release, err := m.cfg.Shaper.Slot(wctx, g)
	evict.Stop()
	if s := m.idle.leave(key, w); s != nil {
		if err == nil {
			release() // both came: the session is ready, the slot spare
		}
		return s, nil, nil
	}
	return nil, release, err
}

// finish keeps s for the next message to its host when its group carries
// more than one per session and the host gave no sign of wanting it
// closed; otherwise it ends s.
func (m *MX) finish(s *mxSession, g *shaping.Rule, results []Result, broken error) {
	if broken != nil {
		s.close(false)
		return
	}
	s.sent++
	keep := g != nil && s.sent < g.Limits.MaxMessagesPerConnection
	for _, r := range results {
		// 421 is the host closing the session; other 4xx replies may be
		// its way of saying this session has sent enough.
		if r.Code == 421 || r.Outcome == Deferred {
			keep = false
		}
	}
	if keep && m.idle.put(s) {
		return
	}
	s.close(true)
}

// closeWait bounds how long Close waits for sessions still carrying a
// message: a goodbye (at most a second) and giving the slot back.
const closeWait = 10 * time.Second

// Close ends the sessions kept open for a next message, and waits for the
// others to end, so that every slot is given back before the connection
// to the fleet's buckets closes.
func (m *MX) Close() error {
	m.idle.close(closeWait)
	return nil
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
