// Package dnscheck looks up the TXT records a sender domain publishes
// (DKIM keys, SPF, DMARC), so that the operator can tell a tenant which of
// the records it asked for are there. It asks name servers directly with
// github.com/miekg/dns: Go's resolver does not tell a missing record from
// a failed lookup, and only the first means "not published".
package dnscheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// ErrNotFound is a definite answer: the name has no TXT record (NXDOMAIN
// or NODATA). Any other error means no answer was had.
var ErrNotFound = errors.New("no TXT record")

// Resolver looks up TXT records.
type Resolver interface {
	// LookupTXT returns each TXT record of name, its strings joined (a
	// DKIM key is longer than one 255-byte string), or ErrNotFound.
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// Servers asks the name servers in order ("host:port" each) until one
// answers.
type Servers struct {
	Addrs []string
	// Timeout bounds each question to each server (default 5 s).
	Timeout time.Duration
}

// System is the name servers of /etc/resolv.conf.
func System() (*Servers, error) {
	cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil {
		return nil, fmt.Errorf("read resolver configuration: %w", err)
	}
	s := &Servers{Timeout: time.Duration(cc.Timeout) * time.Second}
	for _, addr := range cc.Servers {
		s.Addrs = append(s.Addrs, net.JoinHostPort(addr, cc.Port))
	}
	if len(s.Addrs) == 0 {
		return nil, errors.New("read resolver configuration: no name servers in /etc/resolv.conf")
	}
	return s, nil
}

// LookupTXT implements Resolver. It asks for a recursive answer over UDP,
// and again over TCP when the answer was truncated (a 2048-bit key and
// its neighbours may not fit a datagram).
func (s *Servers) LookupTXT(ctx context.Context, name string) ([]string, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	q.RecursionDesired = true
	q.SetEdns0(4096, false)
	var errs []error
	for _, addr := range s.Addrs {
		in, err := s.exchange(ctx, q, addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return txtOf(in, name)
	}
	return nil, fmt.Errorf("look up TXT %s: %w", name, errors.Join(errs...))
}

func (s *Servers) exchange(ctx context.Context, q *dns.Msg, addr string) (*dns.Msg, error) {
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	c := &dns.Client{Timeout: timeout}
	in, _, err := c.ExchangeContext(ctx, q, addr)
	if err == nil && in.Truncated {
		c.Net = "tcp"
		in, _, err = c.ExchangeContext(ctx, q, addr)
	}
	return in, err
}

// txtOf reads an answer: NXDOMAIN and an answer without TXT records are
// ErrNotFound; other failures (SERVFAIL, REFUSED) are no answer.
func txtOf(in *dns.Msg, name string) ([]string, error) {
	switch in.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return nil, fmt.Errorf("TXT %s: %w (NXDOMAIN)", name, ErrNotFound)
	default:
		return nil, fmt.Errorf("look up TXT %s: %s", name, dns.RcodeToString[in.Rcode])
	}
	var out []string
	for _, rr := range in.Answer {
		if txt, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(txt.Txt, ""))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("TXT %s: %w", name, ErrNotFound)
	}
	return out, nil
}
