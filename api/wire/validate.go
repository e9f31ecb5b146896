package wire

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// MaxProblems caps how many validation problems one error lists, so a badly
// broken document yields a readable message rather than one line per account.
const MaxProblems = 10

var idPattern = regexp.MustCompile(IDPattern)

// domainPattern is a DNS name in lowercase, optionally "*." for any subdomain.
// Internationalised names must be written in their xn-- form, because
// envelope senders are compared byte by byte.
var domainPattern = regexp.MustCompile(`^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

// maxDomainLen is the longest DNS name (RFC 1035), plus room for "*.".
const maxDomainLen = 253 + 2

const (
	wantID     = "want 1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
	wantDigest = "want sha256:<64 lowercase hex digits> or pbkdf2-sha256:<iterations>:<salt hex>:<64 lowercase hex digits>"
	wantDomain = "want a domain such as example.com or *.example.com (IDNs in xn-- form)"
)

// LowercaseDomains normalises a's sender domains, which DNS treats without
// regard to case.
func LowercaseDomains(a *Account) {
	for j, d := range a.AllowedSenderDomains {
		a.AllowedSenderDomains[j] = CanonicalDomain(d)
	}
}

// Validate checks every account and that api_users are unique.
func Validate(accounts []Account) error {
	var problems []error
	seen := make(map[string]int, len(accounts))
	for i, a := range accounts {
		where := accountRef(i, a.APIUser)
		for _, p := range checkAccount(a) {
			problems = append(problems, fmt.Errorf("%s: %w", where, p))
		}
		if first, dup := seen[a.APIUser]; dup {
			problems = append(problems, fmt.Errorf("%s: apiUser already used by accounts[%d]", where, first))
		} else if a.APIUser != "" {
			seen[a.APIUser] = i
		}
	}
	return JoinProblems(problems)
}

// accountRef names an account in an error: by index, and by api_user when
// that is well formed (a malformed one is reported by its own problem).
func accountRef(i int, apiUser string) string {
	if idPattern.MatchString(apiUser) {
		return fmt.Sprintf("accounts[%d] (%s)", i, apiUser)
	}
	return fmt.Sprintf("accounts[%d]", i)
}

// CheckAccount says what is wrong with one account, or nil: the publisher
// leaves an account the relay would refuse out of its shard instead of
// failing the whole shard.
func CheckAccount(a Account) error {
	return JoinProblems(checkAccount(a))
}

// checkAccount returns the problems with a single account.
func checkAccount(a Account) []error {
	var problems []error
	add := func(format string, args ...any) {
		problems = append(problems, fmt.Errorf(format, args...))
	}
	switch {
	case a.APIUser == "":
		add("apiUser: required")
	case !idPattern.MatchString(a.APIUser):
		add("apiUser %.40q: %s", a.APIUser, wantID)
	}
	if len(a.KeyDigests) == 0 {
		add("keyDigests: at least one required")
	}
	for j, d := range a.KeyDigests {
		if !ValidDigest(d) {
			add("keyDigests[%d]: %s", j, wantDigest)
		}
	}
	if a.MaxRecipients < 0 {
		add("maxRecipients %d: want 0 (meaning %d) or more", a.MaxRecipients, DefaultMaxRecipients)
	}
	if a.BudgetPerMinute < 0 {
		add("budgetPerMinute %d: want 0 (meaning %d) or more", a.BudgetPerMinute, DefaultBudgetPerMinute)
	}
	for j, d := range a.AllowedSenderDomains {
		if len(d) > maxDomainLen || !domainPattern.MatchString(CanonicalDomain(d)) {
			add("allowedSenderDomains[%d] %.40q: %s", j, d, wantDomain)
		}
	}
	problems = append(problems, checkLabels(a.Labels)...)
	problems = append(problems, checkDKIM(a.DKIM)...)
	if len(a.Suppressions) > MaxSuppressions {
		add("suppressions: %d of them; at most %d", len(a.Suppressions), MaxSuppressions)
	}
	for i, sup := range a.Suppressions {
		if err := CheckSuppression(sup); err != nil {
			add("suppressions[%d]: %v", i, err)
		}
	}
	return append(problems, checkWebhooks(a.Webhooks)...)
}

// checkWebhooks returns the problems with an account's webhooks. Where a
// URL may point (no private addresses) is the relay's to check when it
// connects: a name resolves differently over time.
func checkWebhooks(hooks []Webhook) []error {
	var problems []error
	add := func(format string, args ...any) {
		problems = append(problems, fmt.Errorf(format, args...))
	}
	if len(hooks) > MaxWebhooks {
		add("webhooks: %d of them; at most %d", len(hooks), MaxWebhooks)
	}
	seen := map[string]int{}
	for k, h := range hooks {
		if first, dup := seen[h.URL]; dup {
			add("webhooks[%d]: url already used by webhooks[%d]", k, first)
		} else if checkWebhookURL(h.URL) == nil {
			seen[h.URL] = k
		}
		for _, p := range webhookProblems(h) {
			add("webhooks[%d]: %v", k, p)
		}
	}
	return problems
}

// CheckWebhook says what is wrong with one webhook, nil when the relay
// would post to it. The operator leaves out of a shard a webhook it
// refuses, rather than the whole account: a webhook must never cost an
// account its mail. The secret is never quoted back.
func CheckWebhook(h Webhook) error { return errors.Join(webhookProblems(h)...) }

func webhookProblems(h Webhook) []error {
	var problems []error
	if err := checkWebhookURL(h.URL); err != nil {
		problems = append(problems, fmt.Errorf("url: %w", err))
	}
	for j, e := range h.Events {
		if !slices.Contains(WebhookEventTypes, e) {
			problems = append(problems, fmt.Errorf("events[%d] %.20q: want one of %s", j, e, strings.Join(WebhookEventTypes, ", ")))
		}
	}
	if len(h.Secret) < MinWebhookSecret || len(h.Secret) > MaxWebhookSecret {
		problems = append(problems, fmt.Errorf("secret: want %d to %d characters", MinWebhookSecret, MaxWebhookSecret))
	}
	return problems
}

// checkWebhookURL accepts an absolute http or https URL with a host and
// no user information (which would be sent to the endpoint in clear, and
// logged by proxies).
func checkWebhookURL(raw string) error {
	if len(raw) > MaxWebhookURLLength {
		return fmt.Errorf("longer than %d characters", MaxWebhookURLLength)
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return errors.New("want an absolute URL such as https://hooks.example.com/mailfleet")
	case u.Scheme != "https" && u.Scheme != "http":
		return errors.New("want https:// (or http:// where the relay allows it)")
	case u.Hostname() == "":
		return errors.New("want a host")
	case u.User != nil:
		return errors.New("want no user information in the URL; authenticate with the signature")
	case u.Fragment != "":
		return errors.New("want no #fragment")
	}
	return nil
}

// checkLabels returns the problems with an account's labels.
func checkLabels(labels []Label) []error {
	var problems []error
	seen := make(map[string]int, len(labels))
	for k, l := range labels {
		switch first, dup := seen[l.ID]; {
		case l.ID == "":
			problems = append(problems, fmt.Errorf("labels[%d]: id required", k))
		case !idPattern.MatchString(l.ID):
			problems = append(problems, fmt.Errorf("labels[%d]: id %.40q: %s", k, l.ID, wantID))
		case dup:
			problems = append(problems, fmt.Errorf("labels[%d]: id %s already used by labels[%d]", k, l.ID, first))
		default:
			seen[l.ID] = k
		}
	}
	return problems
}

// JoinProblems combines problems into one error, keeping the first
// MaxProblems and counting the rest.
func JoinProblems(problems []error) error {
	if len(problems) > MaxProblems {
		more := fmt.Errorf("and %d more problems", len(problems)-MaxProblems)
		problems = append(problems[:MaxProblems:MaxProblems], more)
	}
	return errors.Join(problems...)
}

// CanonicalDomain lowercases only A-Z. Domains are compared as ASCII (IDNs
// in their xn-- form); Unicode case mapping would turn, for instance, the
// Kelvin sign into "k" and let a look-alike domain match an allowed one.
func CanonicalDomain(s string) string {
	return strings.Map(func(r rune) rune {
		if 'A' <= r && r <= 'Z' {
			return r + ('a' - 'A')
		}
		return r
	}, s)
}
