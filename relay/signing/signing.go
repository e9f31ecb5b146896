// Package signing DKIM-signs submitted messages (RFC 6376, and RFC 8463 for
// Ed25519) with the keys of the account's verified domains, before they
// enter the queue: the signature is stored with the message, so every
// delivery attempt sends the same bytes. The canonicalization and the
// signature are go-msgauth's.
package signing

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/mailfleet/mailfleet/api/wire"
)

// headerKeys are the fields signed: those RFC 6376 §5.4.1 recommends, and
// the MIME fields that decide how the body reads. From is listed twice
// (oversigned): a From added on the way breaks the signature instead of
// riding on it. A field a message lacks is skipped in the hash, and a
// verifier does the same.
var headerKeys = []string{
	"From", "From", "Reply-To", "Subject", "Date", "To", "Cc",
	"Resent-Date", "Resent-From", "Resent-To", "Resent-Cc",
	"In-Reply-To", "References", "Message-ID",
	"List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post",
	"List-Subscribe", "List-Post", "List-Owner", "List-Archive",
	"MIME-Version", "Content-Type", "Content-Transfer-Encoding",
}

// Key is a parsed key of a domain.
type Key struct {
	Domain   string
	Selector string
	Signer   crypto.Signer
}

// Keyring is an account's keys, parsed once when its credentials change.
// The zero Keyring signs nothing.
type Keyring struct {
	keys []Key
	// Problems names the keys left out, never with key material.
	Problems error
}

// Parse parses an account's keys. A key it cannot use is left out and
// named in Problems: the account's mail goes on, unsigned for that domain.
func Parse(keys []wire.DKIMKey) *Keyring {
	r := &Keyring{}
	var problems []error
	for i, k := range keys {
		signer, err := parseKey(k)
		if err != nil {
			problems = append(problems, fmt.Errorf("dkim[%d] (%.64q, selector %.64q): %w", i, k.Domain, k.Selector, err))
			continue
		}
		r.keys = append(r.keys, Key{Domain: k.Domain, Selector: k.Selector, Signer: signer})
	}
	r.Problems = errors.Join(problems...)
	return r
}

func parseKey(k wire.DKIMKey) (crypto.Signer, error) {
	if err := wire.CheckDKIMKey(k); err != nil {
		return nil, err
	}
	block, _ := pem.Decode([]byte(k.PrivateKey))
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("privateKey: not a PKCS #8 PEM block")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, errors.New("privateKey: not a PKCS #8 key")
	}
	switch key := key.(type) {
	case *rsa.PrivateKey:
		if key.N.BitLen() < 1024 {
			return nil, fmt.Errorf("privateKey: RSA key of %d bits; verifiers ignore signatures under 1024", key.N.BitLen())
		}
		return key, nil
	case ed25519.PrivateKey:
		return key, nil
	}
	return nil, fmt.Errorf("privateKey: a %T; want RSA or Ed25519", key)
}

// Len is how many usable keys the keyring holds.
func (r *Keyring) Len() int {
	if r == nil {
		return 0
	}
	return len(r.keys)
}

// For returns the keys to sign a message from fromDomain with: those of
// the most specific of the keyring's domains that is fromDomain or a parent
// of it (news.acme.example signs as acme.example unless news.acme.example
// has keys of its own). None when no domain covers it: a signature by an
// unrelated domain would not align with From, and says nothing.
func (r *Keyring) For(fromDomain string) []Key {
	if r.Len() == 0 || fromDomain == "" {
		return nil
	}
	fromDomain = wire.CanonicalDomain(fromDomain)
	best := ""
	for _, k := range r.keys {
		if len(k.Domain) > len(best) && (fromDomain == k.Domain || strings.HasSuffix(fromDomain, "."+k.Domain)) {
			best = k.Domain
		}
	}
	var keys []Key
	for _, k := range r.keys {
		if k.Domain == best && best != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

// Signer signs one message written to it, with each of its keys.
type Signer struct {
	signers []*dkim.Signer
	failed  error
	// aborted stops the signatures of a message that is not queued after
	// all (over budget, say): go-msgauth signs when its input ends, and
	// an RSA signature costs a millisecond that a client sending message
	// after message over its budget must not make the relay spend.
	aborted atomic.Bool
}

// gated is a key that refuses to sign once its message was aborted.
type gated struct {
	crypto.Signer
	aborted *atomic.Bool
}

var errAborted = errors.New("dkim: message aborted")

func (g gated) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if g.aborted.Load() {
		return nil, errAborted
	}
	return g.Signer.Sign(rand, digest, opts)
}

// NewSigner starts signing a message with keys (one signature per key).
func NewSigner(keys []Key, now time.Time) (*Signer, error) {
	s := &Signer{}
	for _, k := range keys {
		d, err := dkim.NewSigner(&dkim.SignOptions{
			Domain:                 k.Domain,
			Selector:               k.Selector,
			Signer:                 gated{Signer: k.Signer, aborted: &s.aborted},
			Hash:                   crypto.SHA256,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed,
			BodyCanonicalization:   dkim.CanonicalizationRelaxed,
			HeaderKeys:             headerKeys,
		})
		if err != nil {
			s.Abort()
			return nil, fmt.Errorf("dkim signer for %s (selector %s): %w", k.Domain, k.Selector, err)
		}
		s.signers = append(s.signers, d)
	}
	return s, nil
}

// Write passes the message's bytes, header and body as they are queued, to
// every signature. A signature that failed takes no more; Close reports it.
func (s *Signer) Write(p []byte) (int, error) {
	if s.failed != nil {
		return len(p), nil
	}
	for _, d := range s.signers {
		if _, err := d.Write(p); err != nil {
			s.failed = err
			s.Abort()
			break
		}
	}
	return len(p), nil
}

// Close ends the message and returns the DKIM-Signature fields to put
// before it, each ending in CRLF.
func (s *Signer) Close() (string, error) {
	if s.failed != nil {
		return "", fmt.Errorf("dkim: %w", s.failed)
	}
	var fields strings.Builder
	for _, d := range s.signers {
		if err := d.Close(); err != nil {
			s.Abort()
			return "", fmt.Errorf("dkim: %w", err)
		}
		fields.WriteString(d.Signature())
	}
	return fields.String(), nil
}

// Abort ends every signature's goroutine without a result, and without
// the signing it would cost.
func (s *Signer) Abort() {
	s.aborted.Store(true)
	for _, d := range s.signers {
		d.Close()
	}
}
