package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"time"

	"github.com/mailfleet/mailfleet/relay/delivery"
)

// Resolver answers the addresses of a host (net.Resolver is one).
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// guard keeps webhook POSTs off the cluster's own network: the relay's
// private-address rule of direct MX delivery (delivery.DestinationAllowed)
// applied to every address a webhook's host resolves to, and the
// connection made to the address that was checked, never to a second
// answer of the name server (DNS rebinding).
type guard struct {
	resolver  Resolver
	allowed   []netip.Prefix
	allowHTTP bool
	dialer    net.Dialer
}

// errRefused marks a URL the guard will not post to; such an endpoint is
// not retried sooner than any other failure, but says why in the log.
var errRefused = errors.New("webhook destination refused")

// checkURL refuses what no DNS answer can make acceptable.
func (g *guard) checkURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: unparsable URL", errRefused)
	}
	switch {
	case u.Scheme == "http" && !g.allowHTTP:
		return nil, fmt.Errorf("%w: http:// is not allowed by the relay's config (webhooks.allowHTTP); use https://", errRefused)
	case u.Scheme != "https" && u.Scheme != "http":
		return nil, fmt.Errorf("%w: scheme %q", errRefused, u.Scheme)
	}
	return u, nil
}

// dial resolves addr's host, refuses it unless every address is allowed,
// and connects to the first one that answers among those checked.
func (g *guard) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ips, err := g.resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, ip := range ips {
		c, err := g.dialer.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// resolve returns host's addresses, all of them allowed: one address in a
// special-purpose network refuses the host, so that a name cannot mix a
// public address with an internal one and hope for the second.
func (g *guard) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else {
		ips, err = g.resolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", host, err)
		}
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("resolve %s: no address", host)
	}
	for _, ip := range ips {
		if !delivery.DestinationAllowed(ip, g.allowed) {
			return nil, fmt.Errorf("%w: %s resolves to %s, in a special-purpose network (webhooks.allowedDestinations can allow it)", errRefused, host, ip)
		}
	}
	return ips, nil
}

// client is the HTTP client of webhook POSTs: no proxy (it would dial for
// us, unchecked), no redirects (a 3xx could point inside), every
// connection through the guard.
func (g *guard) client(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         g.dial,
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     90 * time.Second,
			TLSHandshakeTimeout: timeout,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
