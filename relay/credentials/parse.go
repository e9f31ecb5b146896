package credentials

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"

	"sigs.k8s.io/yaml"
)

// maxProblems caps how many validation problems one error lists, so a badly
// broken file yields a readable message rather than one line per account.
const maxProblems = 10

// idPattern is what api_users and label ids may look like. It excludes '#',
// which separates them in a SMTP AUTH username.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// domainPattern is a DNS name in lowercase, optionally "*." for any subdomain.
// Internationalised names must be written in their xn-- form, because
// envelope senders are compared byte by byte.
var domainPattern = regexp.MustCompile(`^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

// maxDomainLen is the longest DNS name (RFC 1035), plus room for "*.".
const maxDomainLen = 253 + 2

const (
	wantID     = "want 1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
	wantDigest = "want sha256:<64 lowercase hex digits> or pbkdf2-sha256:<iterations>:<salt hex>:<64 lowercase hex digits>"
	wantQuoted = `want a quoted string, e.g. "1001" (unquoted, YAML reads 0010 as 8 and yes as true)`
	wantDomain = "want a domain such as example.com or *.example.com (IDNs in xn-- form)"
)

// document is the shape of a credentials file. Accounts is a pointer so that
// a file without the key (empty, or cut short while being written) is told
// apart from an explicit empty list.
type document struct {
	Accounts *[]Account `json:"accounts"`
}

// Parse decodes and validates a credentials document, YAML or JSON:
//
//	accounts:
//	- apiUser: demo
//	  keyDigests: ["sha256:<64 hex digits>"]
//	  budgetPerMinute: 30000        # optional; 0 means DefaultBudgetPerMinute
//	  maxRecipients: 100            # optional; 0 means DefaultMaxRecipients
//	  allowedSenderDomains: [example.com, "*.example.org"]  # optional
//	  suspended: false              # optional
//	  labels:                       # optional
//	  - id: "1001"
//	    suspended: false
//
// Unknown and duplicate fields are errors, so a misspelt "suspended" cannot
// silently leave an account active. apiUser and label ids must be quoted
// strings, so YAML cannot silently read an unquoted 0010 as "8". The document
// must contain the accounts key: an empty document is refused, because it is
// far more likely a file caught mid-write than a wish to revoke every account
// ("accounts: []" does that). Sender domains are returned in lowercase. A
// validation error lists every problem found (up to a limit), each naming
// the account and field.
func Parse(data []byte) ([]Account, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("empty document: want a mapping with an accounts list")
	}
	var doc document
	if err := yaml.UnmarshalStrict(data, &doc); err != nil {
		return nil, err
	}
	if doc.Accounts == nil {
		return nil, errors.New("missing accounts: want accounts: [...] (an explicit empty list revokes every account)")
	}
	if err := checkIDsQuoted(data); err != nil {
		return nil, err
	}
	accounts := *doc.Accounts
	if err := validate(accounts); err != nil {
		return nil, err
	}
	for i := range accounts {
		lowercaseDomains(&accounts[i])
	}
	return accounts, nil
}

// rawIDs mirrors the identifier fields of a document with untyped values.
// Decoding into a string field would have the YAML library silently turn a
// number or boolean into text, and YAML 1.1 reads unquoted 0010 as 8 and yes
// as true; with untyped fields those values stay visible as non-strings.
type rawIDs struct {
	Accounts []struct {
		APIUser any `json:"apiUser"`
		Labels  []struct {
			ID any `json:"id"`
		} `json:"labels"`
	} `json:"accounts"`
}

// checkIDsQuoted refuses api_users and label ids written as YAML numbers or
// booleans, so that an id is never read as something other than what the
// operator typed. It runs after the strict decode, which has already reported
// syntax and shape errors.
func checkIDsQuoted(data []byte) error {
	var raw rawIDs
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return err
	}
	var problems []error
	for i, a := range raw.Accounts {
		if !isStringOrNull(a.APIUser) {
			problems = append(problems, fmt.Errorf("accounts[%d]: apiUser: %s", i, wantQuoted))
		}
		for k, l := range a.Labels {
			if !isStringOrNull(l.ID) {
				problems = append(problems, fmt.Errorf("accounts[%d]: labels[%d]: id: %s", i, k, wantQuoted))
			}
		}
	}
	return joinProblems(problems)
}

// isStringOrNull reports whether v decoded from a string or was absent;
// absence is left for validate to report.
func isStringOrNull(v any) bool {
	_, ok := v.(string)
	return ok || v == nil
}

// lowercaseDomains normalises a's sender domains, which DNS treats without
// regard to case.
func lowercaseDomains(a *Account) {
	for j, d := range a.AllowedSenderDomains {
		a.AllowedSenderDomains[j] = lowerASCII(d)
	}
}

// validate checks every account and that api_users are unique.
func validate(accounts []Account) error {
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
	return joinProblems(problems)
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
	return joinProblems(checkAccount(a))
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
		if !validDigest(d) {
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
		if len(d) > maxDomainLen || !domainPattern.MatchString(lowerASCII(d)) {
			add("allowedSenderDomains[%d] %.40q: %s", j, d, wantDomain)
		}
	}
	return append(problems, checkLabels(a.Labels)...)
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

// joinProblems combines problems into one error, keeping the first
// maxProblems and counting the rest.
func joinProblems(problems []error) error {
	if len(problems) > maxProblems {
		more := fmt.Errorf("and %d more problems", len(problems)-maxProblems)
		problems = append(problems[:maxProblems:maxProblems], more)
	}
	return errors.Join(problems...)
}
