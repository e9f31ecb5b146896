package delivery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// ErrNoSuchDomain is wrapped by a Resolver's errors when the name does not
// exist (NXDOMAIN): a permanent answer, unlike a failure to get one.
var ErrNoSuchDomain = errors.New("no such domain")

// Resolver answers the DNS questions of direct delivery. Both methods
// return an error wrapping ErrNoSuchDomain for NXDOMAIN, an empty answer
// with a nil error when the name exists without records of the type (NODATA),
// and any other error when no answer could be had (SERVFAIL, timeouts),
// which defers delivery.
type Resolver interface {
	// LookupMX returns the domain's MX records, in any order.
	LookupMX(ctx context.Context, domain string) ([]*net.MX, error)
	// LookupIP returns the host's IPv4 and IPv6 addresses.
	LookupIP(ctx context.Context, host string) ([]net.IP, error)
}

// DNSResolver asks DNS servers directly (with github.com/miekg/dns) rather
// than through Go's resolver, which folds NXDOMAIN, NODATA and SERVFAIL
// together in ways delivery cannot tell apart, and drops null MX records.
type DNSResolver struct {
	// Servers are asked in order, "host:port" each.
	Servers []string
	// Timeout bounds each question to each server (default 5 s).
	Timeout time.Duration
}

// NewSystemResolver returns a DNSResolver using the name servers of
// /etc/resolv.conf.
func NewSystemResolver() (*DNSResolver, error) {
	cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil {
		return nil, fmt.Errorf("read resolver configuration: %w", err)
	}
	r := &DNSResolver{Timeout: time.Duration(cc.Timeout) * time.Second}
	for _, s := range cc.Servers {
		r.Servers = append(r.Servers, net.JoinHostPort(s, cc.Port))
	}
	if len(r.Servers) == 0 {
		return nil, errors.New("read resolver configuration: no name servers in /etc/resolv.conf")
	}
	return r, nil
}

// LookupMX implements Resolver.
func (r *DNSResolver) LookupMX(ctx context.Context, domain string) ([]*net.MX, error) {
	answer, err := r.query(ctx, domain, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	var out []*net.MX
	for _, rr := range answer {
		if mx, ok := rr.(*dns.MX); ok {
			out = append(out, &net.MX{Host: mx.Mx, Pref: mx.Preference})
		}
	}
	return out, nil
}

// LookupIP implements Resolver: A then AAAA; the host exists if either
// question says so.
func (r *DNSResolver) LookupIP(ctx context.Context, host string) ([]net.IP, error) {
	var ips []net.IP
	var errs []error
	for _, t := range []uint16{dns.TypeA, dns.TypeAAAA} {
		answer, err := r.query(ctx, host, t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, rr := range answer {
			switch a := rr.(type) {
			case *dns.A:
				ips = append(ips, a.A)
			case *dns.AAAA:
				ips = append(ips, a.AAAA)
			}
		}
	}
	if len(ips) > 0 {
		return ips, nil
	}
	// A failure to get an answer outweighs the other question's NXDOMAIN:
	// the name is only certainly absent when no question failed.
	var nx error
	for _, e := range errs {
		if !errors.Is(e, ErrNoSuchDomain) {
			return nil, e
		}
		nx = e
	}
	return nil, nx
}

// query asks each server in turn until one answers, over UDP with a retry
// over TCP for truncated answers.
func (r *DNSResolver) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	if len(r.Servers) == 0 {
		return nil, errors.New("dns: no servers configured")
	}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	q.RecursionDesired = true
	q.SetEdns0(1232, false)
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	what := fmt.Sprintf("look up %s %s", dns.TypeToString[qtype], strings.TrimSuffix(dns.Fqdn(name), "."))
	var lastErr error
	for _, server := range r.Servers {
		resp, err := exchange(ctx, q, server, "udp", timeout)
		if err == nil && resp.Truncated {
			resp, err = exchange(ctx, q, server, "tcp", timeout)
		}
		if err != nil {
			lastErr = fmt.Errorf("%s at %s: %w", what, server, err)
			continue
		}
		switch resp.Rcode {
		case dns.RcodeSuccess:
			return resp.Answer, nil
		case dns.RcodeNameError:
			return nil, fmt.Errorf("%s: %w", what, ErrNoSuchDomain)
		default:
			lastErr = fmt.Errorf("%s at %s: %s", what, server, dns.RcodeToString[resp.Rcode])
		}
	}
	return nil, lastErr
}

func exchange(ctx context.Context, q *dns.Msg, server, network string, timeout time.Duration) (*dns.Msg, error) {
	c := &dns.Client{Net: network, Timeout: timeout}
	resp, _, err := c.ExchangeContext(ctx, q, server)
	return resp, err
}

// LookupTXT returns each TXT record of name, its strings joined; an error
// wrapping ErrNoSuchDomain for NXDOMAIN (the MTA-STS finder's question).
func (r *DNSResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	answer, err := r.query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range answer {
		if txt, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(txt.Txt, ""))
		}
	}
	return out, nil
}
