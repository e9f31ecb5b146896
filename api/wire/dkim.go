package wire

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// DKIMKey is a key an account signs its messages with (RFC 6376): the
// signature's d= and s=, and the private key, PKCS #8 in PEM (RSA or
// Ed25519). The shard holding it is a Secret, as the key digests' is.
type DKIMKey struct {
	Domain     string `json:"domain"`
	Selector   string `json:"selector"`
	PrivateKey string `json:"privateKey"`
}

// Limits of an account's DKIM keys, so that a shard stays small: an
// RSA-2048 key is about 1.7 KB of PEM.
const (
	// MaxDKIMKeys is two keys (RSA and Ed25519) for each of 10 domains.
	MaxDKIMKeys          = 20
	MaxDKIMPrivateKeyLen = 4096
	// DKIMSelectorPattern is what a selector may look like: one DNS label
	// or more, as the SmtpDomain's validation makes them.
	DKIMSelectorPattern = `^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$`
)

var selectorPattern = regexp.MustCompile(DKIMSelectorPattern)

// DKIMRecordName is where the public key of selector is published for
// domain.
func DKIMRecordName(selector, domain string) string {
	return selector + "._domainkey." + domain
}

// CheckDKIMKey says what is wrong with a key's form, nil when the relay
// would try it; whether the PEM holds a usable key the relay learns when
// it parses it, and signs without a key it cannot use. The key is never
// quoted back.
func CheckDKIMKey(k DKIMKey) error {
	var problems []error
	if len(k.Domain) > maxDomainLen || strings.HasPrefix(k.Domain, "*.") || !domainPattern.MatchString(k.Domain) {
		problems = append(problems, fmt.Errorf("domain %.40q: want a lowercase domain such as example.com", k.Domain))
	}
	if len(k.Selector) > 63 || !selectorPattern.MatchString(k.Selector) {
		problems = append(problems, fmt.Errorf("selector %.40q: want lowercase letters, digits and -", k.Selector))
	}
	if len(k.PrivateKey) > MaxDKIMPrivateKeyLen || !strings.HasPrefix(k.PrivateKey, "-----BEGIN PRIVATE KEY-----") {
		problems = append(problems, errors.New("privateKey: want a PKCS #8 PEM block of at most 4096 bytes"))
	}
	return errors.Join(problems...)
}

func checkDKIM(keys []DKIMKey) []error {
	var problems []error
	if len(keys) > MaxDKIMKeys {
		problems = append(problems, fmt.Errorf("dkim: %d keys; at most %d", len(keys), MaxDKIMKeys))
	}
	for i, k := range keys {
		if err := CheckDKIMKey(k); err != nil {
			problems = append(problems, fmt.Errorf("dkim[%d]: %w", i, err))
		}
	}
	return problems
}

// DKIMRecordValue is the TXT record publishing pub (RFC 6376 §3.6.1,
// RFC 8463 for Ed25519): what a verifier fetches at DKIMRecordName.
func DKIMRecordValue(pub crypto.PublicKey) (string, error) {
	switch pub := pub.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return "", fmt.Errorf("dkim record: %w", err)
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub), nil
	}
	return "", fmt.Errorf("dkim record: a %T; want RSA or Ed25519", pub)
}

// DKIMRecordTag returns the value of tag in a DKIM record, without the
// spaces and tabs a record may carry inside it, and whether it is there.
func DKIMRecordTag(record, tag string) (string, bool) {
	for _, part := range strings.Split(record, ";") {
		name, value, ok := strings.Cut(part, "=")
		if ok && strings.TrimSpace(name) == tag {
			return strings.Join(strings.Fields(value), ""), true
		}
	}
	return "", false
}
