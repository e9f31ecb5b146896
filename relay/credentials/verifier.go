package credentials

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/signing"
)

// dummyDigest stands in for the key digests of an api_user that does not
// exist, so that an unknown user costs the same hash and comparison as a
// known one and response timing does not reveal which users exist. No
// account can be reached through it: Authenticate fails whenever the user is
// unknown, whatever the comparison says.
// It is salted, as what the operator publishes is.
var dummyDigest = wire.SaltedDigest("mailfleet: no such api_user", wire.DigestSalt("", ""))

// dummyDigests holds dummyDigest as a list, built once rather than per call.
var dummyDigests = []string{dummyDigest}

// maxVerified bounds the cache of successful logins; past it the cache
// starts again, which costs each client one slow comparison.
const maxVerified = 1 << 16

// Verifier checks the username and key a client presents in SMTP AUTH against
// a Source.
type Verifier struct {
	src Source

	mu sync.Mutex
	// verified holds stored digest + SHA-256 of a key that matched it, so
	// a client that logs in again skips the salted hash: the slow hash
	// protects what is stored, not a process that has already seen the key.
	verified map[string]struct{}
	// keyrings are the accounts' parsed DKIM keys, by the keys' text: a
	// private key is parsed when it first appears, not at every login.
	keyrings map[string]*signing.Keyring
}

// maxKeyrings bounds the parsed keys kept; past it the cache starts again.
const maxKeyrings = 1 << 12

// NewVerifier returns a Verifier that looks accounts up in src.
func NewVerifier(src Source) *Verifier {
	return &Verifier{src: src, verified: map[string]struct{}{}, keyrings: map[string]*signing.Keyring{}}
}

// Authenticate checks username and key and returns who they identify.
//
// username is "api_user" or "api_user#label_id", split at the first '#'. The
// account must exist and not be suspended, key must match one of its key
// digests, and a label, when given, must belong to that account and not be
// suspended. Every failure returns ErrInvalid and nothing else, so a client
// cannot tell which part was wrong.
func (v *Verifier) Authenticate(username, key string) (Identity, error) {
	apiUser, labelID, hasLabel := wire.SplitUsername(username)
	acct, found := v.src.Lookup(apiUser)
	found = found && acct != nil

	// Hash and compare before looking at any other rule, so that the work
	// done is the same whichever rule ends up failing.
	digests := dummyDigests
	if found {
		digests = acct.KeyDigests
	}
	keyOK := v.matchAny(digests, key)

	if !found || !keyOK || acct.Suspended {
		return Identity{}, ErrInvalid
	}
	if hasLabel && !labelActive(acct, labelID) {
		return Identity{}, ErrInvalid
	}
	id := identityOf(acct, labelID)
	id.DKIM = v.keyring(acct.DKIM)
	return id, nil
}

// keyring returns keys parsed, from the cache when they were seen before.
// Keys that cannot be parsed are left out of it (Keyring.Problems says
// which); the account's mail goes on unsigned for their domains.
func (v *Verifier) keyring(keys []wire.DKIMKey) *signing.Keyring {
	if len(keys) == 0 {
		return nil
	}
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k.Domain + "\x00" + k.Selector + "\x00" + k.PrivateKey + "\x00")
	}
	id := b.String()
	v.mu.Lock()
	r, ok := v.keyrings[id]
	v.mu.Unlock()
	if ok {
		return r
	}
	r = signing.Parse(keys)
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.keyrings) >= maxKeyrings {
		clear(v.keyrings)
	}
	v.keyrings[id] = r
	return r
}

// matchAny compares key with every digest, without stopping at the first
// match, so the time a failure takes depends only on how many digests there
// are. A success seen before is answered from the cache.
func (v *Verifier) matchAny(digests []string, key string) bool {
	plain := wire.Digest(key)
	v.mu.Lock()
	for _, d := range digests {
		if _, ok := v.verified[d+plain]; ok {
			v.mu.Unlock()
			return true
		}
	}
	v.mu.Unlock()
	match := 0
	for _, d := range digests {
		m := wire.CompareDigest(d, key, plain)
		if m == 1 {
			v.remember(d + plain)
		}
		match |= m
	}
	return match == 1
}

func (v *Verifier) remember(entry string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.verified) >= maxVerified {
		clear(v.verified)
	}
	v.verified[entry] = struct{}{}
}

// labelActive reports whether acct has a label id that is not suspended.
func labelActive(acct *Account, id string) bool {
	for _, l := range acct.Labels {
		if l.ID == id {
			return !l.Suspended
		}
	}
	return false
}

// identityOf copies what a session needs out of acct, so that the session
// never shares memory with the Source's snapshot.
func identityOf(acct *Account, labelID string) Identity {
	budget := acct.BudgetPerMinute
	if budget <= 0 {
		budget = wire.DefaultBudgetPerMinute
	}
	maxRcpts := acct.MaxRecipients
	if maxRcpts <= 0 {
		maxRcpts = wire.DefaultMaxRecipients
	}
	return Identity{
		APIUser:              acct.APIUser,
		LabelID:              labelID,
		BudgetPerMinute:      budget,
		MaxRecipients:        maxRcpts,
		CheckHeaderFrom:      acct.SenderPolicy != wire.SenderPolicyEnvelope,
		AllowedSenderDomains: slices.Clone(acct.AllowedSenderDomains),
		RestrictSenders:      acct.RestrictSenders,
		ActiveLabels:         activeLabels(acct),
	}
}

func activeLabels(acct *Account) []string {
	var ids []string
	for _, l := range acct.Labels {
		if !l.Suspended {
			ids = append(ids, l.ID)
		}
	}
	return ids
}

// SenderAllowed reports whether the identity may use address as its envelope
// sender.
//
// With no AllowedSenderDomains (and RestrictSenders unset) every sender is
// allowed. Otherwise the domain
// of address (after its last '@') must equal an entry, ignoring case, or, for
// an entry written "*.example.com", be a subdomain of example.com at any
// depth; "*.example.com" does not match example.com itself, so list both when
// both are wanted. The null sender "" and addresses without a domain are
// refused, since they name no domain the account could be checked against.
//
// The address must already be a valid RFC 5321 mailbox: its domain is then
// what follows the last '@'. A caller that has parsed the address passes
// its domain to SenderDomainAllowed instead.
func (id Identity) SenderAllowed(address string) bool {
	at := strings.LastIndexByte(address, '@')
	if at < 0 {
		return id.SenderDomainAllowed("")
	}
	return id.SenderDomainAllowed(address[at+1:])
}

// SenderDomainAllowed reports whether the identity may send from domain, the
// domain of a parsed envelope sender; "" (the null sender) passes only when
// the account is not restricted.
func (id Identity) SenderDomainAllowed(domain string) bool {
	if id.Unrestricted() {
		return true
	}
	if domain == "" {
		return false
	}
	domain = wire.CanonicalDomain(domain)
	for _, entry := range id.AllowedSenderDomains {
		if domainMatches(wire.CanonicalDomain(entry), domain) {
			return true
		}
	}
	return false
}

// Unrestricted reports whether the identity may send from any domain.
func (id Identity) Unrestricted() bool {
	return len(id.AllowedSenderDomains) == 0 && !id.RestrictSenders
}

// domainMatches reports whether domain is covered by entry; both are lowercase.
func domainMatches(entry, domain string) bool {
	parent, wildcard := strings.CutPrefix(entry, "*.")
	if !wildcard {
		return domain == entry
	}
	// The length check refuses ".example.com", which has an empty label.
	return len(domain) > len(parent)+1 && strings.HasSuffix(domain, "."+parent)
}

// Suppressions are apiUser's SmtpSuppressions' entries that hold at now
// (wire.Account.Suppressions), by address: the published list read as it
// is now, so an entry edited or withdrawn is gone at the next shard.
func (v *Verifier) Suppressions(apiUser string, now time.Time) []wire.Suppression {
	acct, found := v.src.Lookup(apiUser)
	if !found || acct == nil {
		return nil
	}
	out := make([]wire.Suppression, 0, len(acct.Suppressions))
	for _, s := range acct.Suppressions {
		if s.Until == nil || now.Before(*s.Until) {
			out = append(out, s)
		}
	}
	return out
}

// Suppression is apiUser's entry for recipient (of any case), if one of
// its SmtpSuppressions holds it at now.
func (v *Verifier) Suppression(apiUser, recipient string, now time.Time) (wire.Suppression, bool) {
	acct, found := v.src.Lookup(apiUser)
	if !found || acct == nil || len(acct.Suppressions) == 0 {
		return wire.Suppression{}, false
	}
	recipient = strings.ToLower(recipient)
	for _, s := range acct.Suppressions {
		if s.Address == recipient && (s.Until == nil || now.Before(*s.Until)) {
			return s, true
		}
	}
	return wire.Suppression{}, false
}
