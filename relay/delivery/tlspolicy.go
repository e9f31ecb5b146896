package delivery

import (
	"context"
	"errors"
	"strings"

	"github.com/mailfleet/mailfleet/relay/mtasts"
	"github.com/mailfleet/mailfleet/relay/smtpclient"
)

// Where a session's TLS mode came from, as delivered events report it.
const (
	TLSPolicyOpportunistic = "opportunistic"
	TLSPolicyConfigured    = "configured"
	TLSPolicyMTASTS        = "mta-sts"
	// TLSPolicyMTASTSTesting: the destination's MTA-STS policy is in
	// testing mode: it is reported, not enforced.
	TLSPolicyMTASTSTesting = "mta-sts-testing"
	// TLSPolicySmarthost: the smarthost's configured TLS.
	TLSPolicySmarthost = "smarthost"
)

// tlsPolicy is how sessions to one destination domain are protected.
type tlsPolicy struct {
	mode   smtpclient.TLSMode
	source string
}

// tlsPolicyFor decides the destination's TLS, and keeps of targets those
// the policy lets mail go to: a mode configured for the domain (or a parent
// of it) first, then for its destination group, then its MTA-STS policy, else opportunistic STARTTLS. An
// MTA-STS policy in enforce mode requires TLS verified for the MX host's
// name, and only the MX hosts it names; when it names none of them the
// recipients are deferred, as RFC 8461 §5 asks, not sent elsewhere.
func (m *MX) tlsPolicyFor(ctx context.Context, domain, group string, targets []target, rcpts []string) (tlsPolicy, []target, []Result) {
	if mode, ok := configuredTLS(m.cfg.TLSPolicies, domain); ok {
		return tlsPolicy{mode: mode, source: TLSPolicyConfigured}, targets, nil
	}
	if mode, ok := m.cfg.GroupTLS[group]; ok && group != "" {
		return tlsPolicy{mode: mode, source: TLSPolicyConfigured}, targets, nil
	}
	opportunistic := tlsPolicy{mode: smtpclient.TLSOpportunistic, source: TLSPolicyOpportunistic}
	if m.mtasts == nil {
		return opportunistic, targets, nil
	}
	p, err := m.mtasts.Find(ctx, domain)
	if err != nil {
		// RFC 8461 §5: a policy that cannot be had is no policy.
		m.log.Warn("MTA-STS policy unavailable; delivering without it", "domain", domain, "err", err)
		return opportunistic, targets, nil
	}
	switch {
	case p == nil || p.Mode == mtasts.ModeNone:
		return opportunistic, targets, nil
	case p.Mode == mtasts.ModeTesting:
		return tlsPolicy{mode: smtpclient.TLSOpportunistic, source: TLSPolicyMTASTSTesting}, targets, nil
	}
	var kept []target
	for _, tg := range targets {
		if p.Matches(tg.host) {
			kept = append(kept, tg)
		}
	}
	if len(kept) == 0 {
		return tlsPolicy{}, nil, localResults(rcpts, Deferred, "4.7.5",
			"the MTA-STS policy of "+domain+" (enforce) names none of its MX hosts", "")
	}
	return tlsPolicy{mode: smtpclient.TLSRequired, source: TLSPolicyMTASTS}, kept, nil
}

// configuredTLS is the mode policies set for domain or its nearest parent.
func configuredTLS(policies map[string]smtpclient.TLSMode, domain string) (smtpclient.TLSMode, bool) {
	for d := domain; d != ""; {
		if mode, ok := policies[d]; ok {
			return mode, true
		}
		_, parent, found := strings.Cut(d, ".")
		if !found {
			break
		}
		d = parent
	}
	return 0, false
}

// withTLS records on each result what protected the session that gave it.
func withTLS(results []Result, state smtpclient.TLSState, policy string) []Result {
	version := state.Version
	if version == "" {
		version = "none"
	}
	for i := range results {
		results[i].TLS = &TLSResult{Version: version, Verified: state.Verified, Policy: policy}
	}
	return results
}

// TLSResult is what protected the session that delivered (or refused) a
// recipient.
type TLSResult struct {
	// Version is "TLSv1.3", "TLSv1.2", or "none".
	Version string
	// Verified: the certificate verified for the name the server was
	// reached by.
	Verified bool
	// Policy is where the session's TLS mode came from (TLSPolicy*).
	Policy string
}

// IsNotFound is what an MTA-STS finder on a DNSResolver takes for "no
// such record".
func IsNotFound(err error) bool { return errors.Is(err, ErrNoSuchDomain) }
