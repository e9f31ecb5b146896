package credentials

import (
	"bytes"
	"errors"
	"fmt"

	"sigs.k8s.io/yaml"

	"github.com/mailfleet/mailfleet/api/wire"
)

// wantQuoted is what YAML ids must look like.
const wantQuoted = `want a quoted string, e.g. "1001" (unquoted, YAML reads 0010 as 8 and yes as true)`

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
	var doc wire.Shard
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
	if err := wire.Validate(accounts); err != nil {
		return nil, err
	}
	for i := range accounts {
		wire.LowercaseDomains(&accounts[i])
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
	return wire.JoinProblems(problems)
}

// isStringOrNull reports whether v decoded from a string or was absent;
// absence is left for validate to report.
func isStringOrNull(v any) bool {
	_, ok := v.(string)
	return ok || v == nil
}
