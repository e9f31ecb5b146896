// Package shaping keeps direct delivery within what each large mailbox
// provider takes from one sender: a fleet-wide bound on concurrent
// sessions and on messages per minute per destination group, and a pause
// of the whole group when it answers 421 (as KumoMTA's traffic shaping
// and Postfix's destination concurrency feedback do). The relays of a
// fleet share the counts through JetStream key-value buckets beside their
// queue, so the fleet, not each pod, keeps within the limits.
package shaping

import (
	"regexp"
	"strings"
)

// Limits bound one destination group across the fleet; 0 is no bound.
type Limits struct {
	MaxConnections int
	MaxPerMinute   int
	// MaxMessagesPerConnection is how many messages one session carries
	// before it is closed: above 1, a session stays open for the next
	// delivery to the same MX host (with RSET between, as Postfix's
	// connection cache does). 0 or 1: one message per session.
	MaxMessagesPerConnection int
}

// Rule is a destination group: the recipient domains (with their
// subdomains) and MX host names (with the names under them) it takes in,
// and its limits.
type Rule struct {
	Name    string
	Domains []string
	MXHosts []string
	Limits  Limits
}

// NamePattern is what a group's name may look like: it is part of the
// buckets' keys and of a metric label.
var NamePattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// DefaultRules are the large mailbox providers, by their own domains and
// by the MX hosts of the domains they host. None of them publishes fixed
// figures (what they take depends on the sending IPs' reputation): the
// limits are cautious starting points, documented in
// docs/deliverability.md, that a relay overrides by naming the group in
// its destinations.
func DefaultRules() []Rule {
	return []Rule{
		{Name: "google", Domains: []string{"gmail.com", "googlemail.com"}, MXHosts: []string{"google.com", "googlemail.com"},
			Limits: Limits{MaxConnections: 20, MaxPerMinute: 3000, MaxMessagesPerConnection: 100}},
		{Name: "microsoft", Domains: []string{"outlook.com", "hotmail.com", "live.com", "msn.com"}, MXHosts: []string{"protection.outlook.com", "olc.protection.outlook.com"},
			Limits: Limits{MaxConnections: 10, MaxPerMinute: 1200, MaxMessagesPerConnection: 20}},
		{Name: "yahoo", Domains: []string{"yahoo.com", "aol.com", "ymail.com"}, MXHosts: []string{"yahoodns.net"},
			Limits: Limits{MaxConnections: 10, MaxPerMinute: 1200, MaxMessagesPerConnection: 20}},
		{Name: "apple", Domains: []string{"icloud.com", "me.com", "mac.com"}, MXHosts: []string{"mail.icloud.com"},
			Limits: Limits{MaxConnections: 5, MaxPerMinute: 600, MaxMessagesPerConnection: 20}},
	}
}

// Rules are the groups of a relay: its own, then the defaults it did not
// override by name.
type Rules []Rule

// WithDefaults puts own before the defaults whose names own does not use.
func WithDefaults(own []Rule) Rules {
	out := Rules(own)
	for _, d := range DefaultRules() {
		if !out.has(d.Name) {
			out = append(out, d)
		}
	}
	return out
}

func (r Rules) has(name string) bool {
	for _, x := range r {
		if x.Name == name {
			return true
		}
	}
	return false
}

// For returns the group of a recipient domain whose MX hosts are mx: the
// first rule naming the domain (or a parent), else the first naming one
// of its MX hosts (or a parent). ok is false for a destination no rule
// takes in, which only the per-pod limits bound.
func (r Rules) For(domain string, mx []string) (Rule, bool) {
	domain = canonical(domain)
	for _, rule := range r {
		if anyCovers(rule.Domains, domain) {
			return rule, true
		}
	}
	for _, rule := range r {
		for _, h := range mx {
			if anyCovers(rule.MXHosts, canonical(h)) {
				return rule, true
			}
		}
	}
	return Rule{}, false
}

func anyCovers(parents []string, name string) bool {
	for _, p := range parents {
		p = canonical(p)
		if name == p || strings.HasSuffix(name, "."+p) {
			return true
		}
	}
	return false
}

func canonical(s string) string { return strings.ToLower(strings.TrimSuffix(s, ".")) }
