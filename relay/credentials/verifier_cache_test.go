package credentials

import (
	"testing"

	"github.com/mailfleet/mailfleet/api/wire"
)

// TestVerifierCachesSuccessOnly: a login seen before skips the salted hash,
// a wrong key is never cached, and a digest no longer published is not
// reached through the cache.
func TestVerifierCachesSuccessOnly(t *testing.T) {
	key := "the-right-key-of-thirty-two-chars!"
	src := &staticSource{accounts: map[string]*Account{"acme": {APIUser: "acme", KeyDigests: []string{wire.SaltedDigest(key, wire.DigestSalt("s", "acme"))}}}}
	v := NewVerifier(src)
	for range 2 {
		if _, err := v.Authenticate("acme", key); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Authenticate("acme", "wrong"); err == nil {
			t.Fatal("a wrong key was accepted")
		}
	}
	if len(v.verified) != 1 {
		t.Errorf("%d cache entries, want the one success", len(v.verified))
	}
	src.accounts["acme"] = &Account{APIUser: "acme", KeyDigests: []string{wire.SaltedDigest("a-new-key-of-thirty-two-characters", wire.DigestSalt("s", "acme"))}}
	if _, err := v.Authenticate("acme", key); err == nil {
		t.Fatal("a replaced key still logs in through the cache")
	}
}

type staticSource struct{ accounts map[string]*Account }

func (s *staticSource) Lookup(apiUser string) (*Account, bool) {
	a, ok := s.accounts[apiUser]
	return a, ok
}
