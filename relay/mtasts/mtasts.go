// Package mtasts finds a destination domain's MTA-STS policy (RFC 8461):
// a TXT record at _mta-sts.<domain> says a policy exists and its id, and
// the policy itself is fetched over verified HTTPS from
// https://mta-sts.<domain>/.well-known/mta-sts.txt. A policy in enforce
// mode names the MX hosts mail may go to and requires TLS with a
// certificate that verifies for them. Policies are cached for their
// max_age and fetched again only when the id changes, as the RFC asks.
package mtasts

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// Modes of a policy.
const (
	ModeEnforce = "enforce"
	ModeTesting = "testing"
	ModeNone    = "none"
)

// Policy is a domain's MTA-STS policy.
type Policy struct {
	Mode   string
	MX     []string
	MaxAge time.Duration
	// ID is the TXT record's id the policy was fetched for.
	ID string
}

// Matches reports whether the policy lets mail go to host: a pattern is a
// host name, or "*." and a name matching exactly one more label on the
// left (RFC 8461 §4.1).
func (p *Policy) Matches(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, pat := range p.MX {
		pat = strings.ToLower(pat)
		if rest, ok := strings.CutPrefix(pat, "*."); ok {
			label, parent, found := strings.Cut(host, ".")
			if found && label != "" && parent == rest {
				return true
			}
			continue
		}
		if host == pat {
			return true
		}
	}
	return false
}

// maxPolicyBytes bounds a policy body; real ones are a few hundred bytes.
const maxPolicyBytes = 64 << 10

// maxMaxAge is the longest max_age a policy may have (about a year).
const maxMaxAge = 31557600 * time.Second

// Parse reads a policy body (RFC 8461 §3.2).
func Parse(body string) (*Policy, error) {
	p := &Policy{}
	version := ""
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch strings.TrimSpace(key) {
		case "version":
			version = value
		case "mode":
			p.Mode = value
		case "mx":
			p.MX = append(p.MX, value)
		case "max_age":
			n, err := strconv.ParseUint(value, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("mta-sts policy: max_age %q", value)
			}
			p.MaxAge = min(time.Duration(n)*time.Second, maxMaxAge)
		}
	}
	switch {
	case version != "STSv1":
		return nil, fmt.Errorf("mta-sts policy: version %q, want STSv1", version)
	case p.Mode != ModeEnforce && p.Mode != ModeTesting && p.Mode != ModeNone:
		return nil, fmt.Errorf("mta-sts policy: mode %q", p.Mode)
	case p.Mode != ModeNone && len(p.MX) == 0:
		return nil, errors.New("mta-sts policy: no mx")
	case p.MaxAge <= 0:
		return nil, errors.New("mta-sts policy: no max_age")
	}
	return p, nil
}

// recordID is the id of a "v=STSv1; id=..." record among records; "" when
// there is not exactly one such record (RFC 8461 §3.1: then no policy).
func recordID(records []string) string {
	id, n := "", 0
	for _, r := range records {
		fields := strings.Split(r, ";")
		if strings.TrimSpace(fields[0]) != "v=STSv1" {
			continue
		}
		n++
		for _, f := range fields[1:] {
			if k, v, ok := strings.Cut(strings.TrimSpace(f), "="); ok && k == "id" {
				id = v
			}
		}
	}
	if n != 1 {
		return ""
	}
	return id
}

// TXTResolver looks up TXT records; a missing name is an error wrapping
// NotFound's, so that a policy already cached stays in use only when the
// lookup failed, not when the record was withdrawn.
type TXTResolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// Config tunes a Finder.
type Config struct {
	DNS TXTResolver
	// IsNotFound tells a missing record from a failed lookup.
	IsNotFound func(error) bool
	// Dial opens the HTTPS connection; the relay's guards against private
	// addresses apply to it as to delivery (default: a net.Dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// RootCAs verify the policy host (nil: the system's).
	RootCAs *x509.CertPool
	// Timeout bounds a fetch (default 10 s).
	Timeout time.Duration
	// MaxEntries bounds the cache (default 100,000 domains).
	MaxEntries int
	Now        func() time.Time
}

// Finder finds and caches domains' policies. It is safe for concurrent
// use.
type Finder struct {
	cfg    Config
	client *http.Client

	mu    sync.Mutex
	cache map[string]cached
	// fetches shares one fetch of a domain's policy among the deliveries
	// that ask for it at once: a burst to a new domain is one HTTPS
	// request, not one per worker.
	fetches singleflight.Group
}

type cached struct {
	policy  *Policy
	expires time.Time
}

// New makes a Finder.
func New(cfg Config) *Finder {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 100_000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	transport := &http.Transport{
		DialContext:       cfg.Dial,
		TLSClientConfig:   &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
		DisableKeepAlives: true,
		Proxy:             nil,
	}
	return &Finder{cfg: cfg, cache: map[string]cached{},
		client: &http.Client{Transport: transport, Timeout: cfg.Timeout,
			// RFC 8461 §3.3: redirects are not followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// Find returns domain's policy, or nil when it has none. An error means
// none could be had (the TXT record says there is one, but the fetch
// failed, and none is cached): delivery then goes on as without a policy,
// as RFC 8461 §5 says of a policy that cannot be fetched.
func (f *Finder) Find(ctx context.Context, domain string) (*Policy, error) {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	now := f.cfg.Now()
	f.mu.Lock()
	c, ok := f.cache[domain]
	f.mu.Unlock()
	if ok && !now.Before(c.expires) {
		ok = false
	}
	records, err := f.cfg.DNS.LookupTXT(ctx, "_mta-sts."+domain)
	switch {
	case err != nil && f.cfg.IsNotFound != nil && f.cfg.IsNotFound(err):
		// No record: a cached policy still holds until it expires
		// (§5.1: an attacker could strip the record).
		if ok {
			return c.policy, nil
		}
		return nil, nil
	case err != nil:
		if ok {
			return c.policy, nil
		}
		return nil, fmt.Errorf("mta-sts: look up _mta-sts.%s: %w", domain, err)
	}
	id := recordID(records)
	if id == "" {
		if ok {
			return c.policy, nil
		}
		return nil, nil
	}
	if ok && c.policy.ID == id {
		return c.policy, nil
	}
	v, err, _ := f.fetches.Do(domain+" "+id, func() (any, error) {
		// Not the caller's context: the fetch is shared, and one caller
		// giving up must not fail the others. Config.Timeout bounds it.
		p, err := f.fetch(context.WithoutCancel(ctx), domain)
		if err != nil {
			return nil, err
		}
		p.ID = id
		f.store(domain, p, now)
		return p, nil
	})
	if err != nil {
		if ok {
			return c.policy, nil
		}
		return nil, err
	}
	return v.(*Policy), nil
}

func (f *Finder) store(domain string, p *Policy, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.cache) >= f.cfg.MaxEntries {
		clear(f.cache)
	}
	f.cache[domain] = cached{policy: p, expires: now.Add(p.MaxAge)}
}

// fetch gets the policy body over HTTPS.
func (f *Finder) fetch(ctx context.Context, domain string) (*Policy, error) {
	url := "https://mta-sts." + domain + "/.well-known/mta-sts.txt"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("mta-sts: %w", err)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("mta-sts: fetch the policy of %s: %w", domain, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("mta-sts: fetch the policy of %s: HTTP %d", domain, resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(strings.ToLower(ct), "text/plain") {
		return nil, fmt.Errorf("mta-sts: the policy of %s is %q, not text/plain", domain, ct)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPolicyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("mta-sts: read the policy of %s: %w", domain, err)
	}
	if len(body) > maxPolicyBytes {
		return nil, fmt.Errorf("mta-sts: the policy of %s is over %d bytes", domain, maxPolicyBytes)
	}
	p, err := Parse(string(body))
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, domain)
	}
	return p, nil
}
