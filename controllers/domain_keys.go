package controllers

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"slices"
	"strconv"
	"time"

	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
)

// DKIM algorithms, as a signature's a= names them.
const (
	algRSA     = "rsa-sha256"
	algEd25519 = "ed25519-sha256"
)

// Defaults of an SmtpDomain's keys.
const (
	defaultSelectorPrefix = "mailfleet"
	defaultKeyGrace       = 7 * 24 * time.Hour
	rsaKeyBits            = 2048
)

// domainKeys is what the operator keeps of a domain, in a Secret of its own
// namespace that no tenant can write (keySecretName): the keys, their
// states, and whether DNS last showed the signing keys' records. Only the
// operator writes it, so the publisher trusts it where it may trust
// neither the SmtpDomain's status nor a Secret in the tenant's namespace.
type domainKeys struct {
	// Namespace, Name and UID are the SmtpDomain's: an SmtpDomain made
	// again under the same name starts with new keys.
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	UID       types.UID `json:"uid"`
	Domain    string    `json:"domain"`
	// Verified: the last definite DNS answers found every Active key's
	// record, with its value.
	Verified bool        `json:"verified"`
	Keys     []domainKey `json:"keys"`
}

// domainKey is one key.
type domainKey struct {
	Selector   string `json:"selector"`
	Algorithm  string `json:"algorithm"`
	PrivateKey string `json:"privateKey"`
	// Record is the TXT record that publishes the key.
	Record      string     `json:"record"`
	Set         int        `json:"set"`
	State       string     `json:"state"`
	CreatedAt   time.Time  `json:"createdAt"`
	ActiveSince *time.Time `json:"activeSince,omitempty"`
	RetireAt    *time.Time `json:"retireAt,omitempty"`
}

func (k *domainKeys) marshal() ([]byte, error) { return json.Marshal(k) }

// parseDomainKeys reads what keySecret holds for d; a document of another
// SmtpDomain, or none, starts afresh.
func parseDomainKeys(data []byte, d *v1.SmtpDomain) *domainKeys {
	var k domainKeys
	if json.Unmarshal(data, &k) != nil || k.UID != d.UID || k.Domain != d.Spec.Domain ||
		k.Namespace != d.Namespace || k.Name != d.Name {
		return &domainKeys{Namespace: d.Namespace, Name: d.Name, UID: d.UID, Domain: d.Spec.Domain}
	}
	return &k
}

// keyGen makes a private key; tests make smaller RSA keys than 2048 bits.
type keyGen func(alg string) (crypto.Signer, error)

func generateKey(alg string) (crypto.Signer, error) {
	if alg == algEd25519 {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return rsa.GenerateKey(rand.Reader, rsaKeyBits)
}

// withState returns the keys in state.
func (k *domainKeys) withState(state string) []domainKey {
	var out []domainKey
	for _, key := range k.Keys {
		if key.State == state {
			out = append(out, key)
		}
	}
	return out
}

// prepare retires the keys whose grace period ended and makes the next set
// of keys when there is none to sign with yet, when the signing one is
// due for rotation, or when the algorithms asked for changed. It reports
// whether anything changed.
func (k *domainKeys) prepare(spec v1.DomainDKIM, now time.Time, gen keyGen) (bool, error) {
	before := len(k.Keys)
	k.Keys = slices.DeleteFunc(k.Keys, func(key domainKey) bool {
		return key.State == v1.DKIMKeyRetiring && key.RetireAt != nil && !now.Before(*key.RetireAt)
	})
	changed := len(k.Keys) != before
	if len(k.withState(v1.DKIMKeyPending)) > 0 || !k.needsSet(spec, now) {
		return changed, nil
	}
	set := 1
	for _, key := range k.Keys {
		set = max(set, key.Set+1)
	}
	prefix := spec.SelectorPrefix
	if prefix == "" {
		prefix = defaultSelectorPrefix
	}
	algs := []string{algRSA}
	if spec.Ed25519 {
		algs = append(algs, algEd25519)
	}
	for _, alg := range algs {
		key, err := newDomainKey(prefix, set, alg, now, gen)
		if err != nil {
			return changed, err
		}
		k.Keys = append(k.Keys, key)
	}
	return true, nil
}

// needsSet reports whether a new set of keys is due.
func (k *domainKeys) needsSet(spec v1.DomainDKIM, now time.Time) bool {
	active := k.withState(v1.DKIMKeyActive)
	if len(active) == 0 {
		return true
	}
	hasEd := slices.ContainsFunc(active, func(key domainKey) bool { return key.Algorithm == algEd25519 })
	if hasEd != spec.Ed25519 {
		return true
	}
	since := active[0].CreatedAt
	if active[0].ActiveSince != nil {
		since = *active[0].ActiveSince
	}
	return spec.RotateAfter != nil && now.Sub(since) >= spec.RotateAfter.Duration
}

func newDomainKey(prefix string, set int, alg string, now time.Time, gen keyGen) (domainKey, error) {
	selector := prefix + "-" + strconv.Itoa(set)
	if alg == algEd25519 {
		selector += "-ed"
	}
	signer, err := gen(alg)
	if err != nil {
		return domainKey{}, fmt.Errorf("make %s key: %w", alg, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		return domainKey{}, fmt.Errorf("encode %s key: %w", alg, err)
	}
	record, err := wire.DKIMRecordValue(signer.Public())
	if err != nil {
		return domainKey{}, err
	}
	return domainKey{
		Selector: selector, Algorithm: alg, Set: set, State: v1.DKIMKeyPending, CreatedAt: now.UTC().Truncate(time.Second),
		PrivateKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), Record: record,
	}, nil
}

// advance switches signing to the pending set once DNS shows all of its
// records (found holds each selector's record state), keeping the set it
// replaces for the grace period, and says whether the domain is verified.
// A lookup that failed (Unknown) changes nothing: a DNS outage must not
// stop a domain's mail.
func (k *domainKeys) advance(found map[string]string, spec v1.DomainDKIM, now time.Time) bool {
	changed := false
	pending := k.withState(v1.DKIMKeyPending)
	if len(pending) > 0 && allIn(pending, found, v1.DNSRecordFound) {
		grace := defaultKeyGrace
		if spec.GracePeriod != nil {
			grace = spec.GracePeriod.Duration
		}
		at := now.UTC().Truncate(time.Second)
		retire := at.Add(grace)
		for i := range k.Keys {
			switch k.Keys[i].State {
			case v1.DKIMKeyActive:
				k.Keys[i].State, k.Keys[i].RetireAt = v1.DKIMKeyRetiring, &retire
			case v1.DKIMKeyPending:
				k.Keys[i].State, k.Keys[i].ActiveSince = v1.DKIMKeyActive, &at
			}
		}
		changed = true
	}
	active := k.withState(v1.DKIMKeyActive)
	verified := k.Verified
	switch {
	case len(active) == 0:
		verified = false
	case allIn(active, found, v1.DNSRecordFound):
		verified = true
	case !anyIn(active, found, v1.DNSRecordUnknown):
		verified = false
	}
	if verified != k.Verified {
		k.Verified, changed = verified, true
	}
	return changed
}

func allIn(keys []domainKey, found map[string]string, state string) bool {
	for _, key := range keys {
		if found[key.Selector] != state {
			return false
		}
	}
	return true
}

func anyIn(keys []domainKey, found map[string]string, state string) bool {
	for _, key := range keys {
		if found[key.Selector] == state {
			return true
		}
	}
	return false
}

// signingKeys are what the relays sign with for the domain: its Active
// keys, once verified.
func (k *domainKeys) signingKeys() []wire.DKIMKey {
	if !k.Verified {
		return nil
	}
	var out []wire.DKIMKey
	for _, key := range k.withState(v1.DKIMKeyActive) {
		out = append(out, wire.DKIMKey{Domain: k.Domain, Selector: key.Selector, PrivateKey: key.PrivateKey})
	}
	return out
}
