// Package credentials holds the accounts and labels that may submit mail, and
// verifies the keys they present.
//
// The relay never stores a plaintext key: an account carries digests of its
// valid keys (more than one while a rotation's grace period runs), and a
// presented key is hashed and compared with each digest in constant time.
package credentials

import (
	"errors"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/signing"
)

// ErrInvalid is returned for any failed authentication. It deliberately does
// not say whether the user, the label or the key was wrong.
var ErrInvalid = errors.New("invalid credentials")

// Account and Label are the shard format's, which the file source reads too.
type (
	Account = wire.Account
	Label   = wire.Label
)

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
	// ActiveLabels are the account's labels that are not suspended, for a
	// message that names its label itself (X-SMTPAPI's labelId).
	ActiveLabels []string
	// RestrictSenders: AllowedSenderDomains is the whole list even when
	// empty (wire.Account.RestrictSenders).
	RestrictSenders bool
	// DKIM is the account's signing keys, parsed; shared by every session
	// of the account and never changed.
	DKIM *signing.Keyring
}

// Source answers lookups of accounts by api_user. The file source lives in
// this package; the Kubernetes source is added behind the same interface.
type Source interface {
	Lookup(apiUser string) (*Account, bool)
}
