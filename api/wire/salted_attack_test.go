package wire

import (
	"strings"
	"testing"
)

// Attack (issue 12.19): shards held unsalted SHA-256 digests, so a leaked
// shard showed which accounts (and, across relays, which fleets) shared a
// key, and let anyone test a guess at the cost of one SHA-256 for every
// account at once. What the operator publishes is now salted per relay and
// account and costs saltedIterations HMACs per guess and account.
func TestAttackLeakedShardDigests(t *testing.T) {
	key := "a-key-that-two-tenants-happen-to-share-0123"
	a := SaltedDigest(key, DigestSalt("mail/mx", "acme"))
	b := SaltedDigest(key, DigestSalt("mail/mx", "beta"))
	c := SaltedDigest(key, DigestSalt("other/mx", "acme"))
	if a == b || a == c || b == c {
		t.Fatalf("one key gives equal digests across accounts or relays: %s %s %s", a, b, c)
	}
	if strings.Contains(a, Digest(key)[len(digestScheme):]) {
		t.Fatal("the salted digest contains the plain SHA-256")
	}
	if a != SaltedDigest(key, DigestSalt("mail/mx", "acme")) {
		t.Fatal("the same key, relay and account give two digests: every publish would rewrite the shard")
	}
	for _, d := range []string{a, b, c} {
		if !ValidDigest(d) || !MatchDigest(d, key) || MatchDigest(d, key+"x") {
			t.Errorf("%s: valid %v, matches key %v", d, ValidDigest(d), MatchDigest(d, key))
		}
	}
	if iterations, _, _ := parseSalted(a); iterations < 1000 {
		t.Errorf("%d iterations: a guess costs too little", iterations)
	}
}

// TestSaltedDigestFormat refuses what a relay should not compute: unknown
// schemes, cost parameters past the bound, malformed parts.
func TestSaltedDigestFormat(t *testing.T) {
	good := SaltedDigest("k", []byte("0123456789abcdef"))
	for _, bad := range []string{
		"pbkdf2-sha256:2000:00",
		"pbkdf2-sha256:0:" + strings.Repeat("0", 32) + ":" + strings.Repeat("0", 64),
		"pbkdf2-sha256:1000000000:" + strings.Repeat("0", 32) + ":" + strings.Repeat("0", 64),
		"pbkdf2-sha256:02000:" + strings.Repeat("0", 32) + ":" + strings.Repeat("0", 64),
		"pbkdf2-sha256:2000:" + strings.Repeat("0", 32) + ":" + strings.Repeat("A", 64),
		"pbkdf2-sha256:2000::" + strings.Repeat("0", 64),
		"pbkdf2-sha512:2000:" + strings.Repeat("0", 32) + ":" + strings.Repeat("0", 64),
		strings.ToUpper(good),
	} {
		if ValidDigest(bad) || MatchDigest(bad, "k") {
			t.Errorf("%q accepted", bad)
		}
	}
	if !ValidDigest(good) || !ValidDigest(Digest("k")) {
		t.Error("well-formed digests refused")
	}
}

// BenchmarkAuthenticateSalted is the cost of a first login (or a failed
// one) against one salted digest; issue 12.19 wants it under a millisecond.
func BenchmarkAuthenticateSalted(b *testing.B) {
	key := "the-right-key-of-thirty-two-chars!"
	d := SaltedDigest(key, DigestSalt("s", "acme"))
	plain := Digest(key)
	for b.Loop() {
		if CompareDigest(d, key, plain) != 1 {
			b.Fatal("no match")
		}
	}
}
