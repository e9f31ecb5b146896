// Package credentials holds the accounts and labels that may submit mail, and
// verifies the keys they present.
//
// The relay never stores a plaintext key: an account carries digests of its
// valid keys (more than one while a rotation's grace period runs), and a
// presented key is hashed and compared with each digest in constant time.
package credentials

import "errors"

// ErrInvalid is returned for any failed authentication. It deliberately does
// not say whether the user, the label or the key was wrong.
var ErrInvalid = errors.New("invalid credentials")

// DefaultBudgetPerMinute is the budget of an account that sets none (the seeds' figure).
const DefaultBudgetPerMinute = 30000

// MinKeyLength is the shortest key an account may bring of its own: 32
// characters carry at least 128 bits as hex, and more in base64.
const MinKeyLength = 32

// DefaultMaxRecipients caps the recipients of one message of an account
// that sets no cap, as SES and the seeds' services do; a client sends the
// rest in another transaction after 452 4.5.3.
const DefaultMaxRecipients = 100

// Account is one sender, as the relay sees it.
type Account struct {
	APIUser              string   `json:"apiUser"`
	KeyDigests           []string `json:"keyDigests"`
	BudgetPerMinute      int      `json:"budgetPerMinute,omitempty"`
	MaxRecipients        int      `json:"maxRecipients,omitempty"`
	AllowedSenderDomains []string `json:"allowedSenderDomains,omitempty"`
	// SenderPolicy is SenderPolicyEnvelope to check only MAIL FROM against
	// AllowedSenderDomains; empty checks the header From too.
	SenderPolicy string  `json:"senderPolicy,omitempty"`
	Suspended    bool    `json:"suspended,omitempty"`
	Labels       []Label `json:"labels,omitempty"`
}

// Label is a sub-identity of an account, used as api_user#label_id.
type Label struct {
	ID        string `json:"id"`
	Suspended bool   `json:"suspended,omitempty"`
}

// Identity is who a session authenticated as.
type Identity struct {
	APIUser              string
	LabelID              string // empty when the client logged in without a label
	BudgetPerMinute      int
	MaxRecipients        int
	AllowedSenderDomains []string
	// CheckHeaderFrom: the message's From addresses must be in
	// AllowedSenderDomains too.
	CheckHeaderFrom bool
}

// SenderPolicyEnvelope checks only the envelope sender; the default checks
// the header From as well, which is what recipients see.
const SenderPolicyEnvelope = "Envelope"

// Source answers lookups of accounts by api_user. The file source lives in
// this package; the Kubernetes source is added behind the same interface.
type Source interface {
	Lookup(apiUser string) (*Account, bool)
}
