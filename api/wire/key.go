package wire

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// digestScheme prefixes every stored digest, so that another scheme can be
// introduced later without ambiguity about how an existing digest was made.
const digestScheme = "sha256:"

// digestLen is the length of a well-formed digest: the scheme and 64 hex digits.
const digestLen = len(digestScheme) + 2*sha256.Size

// keyBytes is how much randomness NewKey puts in a key.
const keyBytes = 32

// Digest returns the stored form of key: "sha256:" followed by the lowercase
// hex SHA-256 of key.
//
// A fast, unsalted hash is enough because keys are not passwords: the
// operator generates them with 256 bits of entropy (see NewKey), so neither a
// dictionary nor a brute-force search of a leaked digest can succeed, and a
// slow KDF would only add CPU to every SMTP AUTH. Do not reuse this for
// secrets chosen by people.
func Digest(key string) string {
	sum := sha256.Sum256([]byte(key))
	return digestScheme + hex.EncodeToString(sum[:])
}

// NewKey returns a fresh random key: 32 bytes from crypto/rand, in unpadded
// base64url so it can be typed into an SMTP client's password field as is.
func NewKey() (string, error) { return NewKeyOfSize(keyBytes) }

// NewKeyOfSize returns a random key of n bytes from crypto/rand in unpadded
// base64url whose first character is a letter or a digit. A key starting
// with '-' (one in 64 of them) reads as an option to the tools people paste
// it into: swaks fails with "Unknown option", even as --auth-password=KEY.
// Drawing again until the first character is alphanumeric keeps the keys
// uniform over what is accepted, at a cost of 0.05 bits of entropy.
func NewKeyOfSize(n int) (string, error) {
	b := make([]byte, n)
	for {
		if _, err := rand.Read(b); err != nil {
			return "", fmt.Errorf("generate key: %w", err)
		}
		k := base64.RawURLEncoding.EncodeToString(b)
		if c := k[0]; c != '-' && c != '_' {
			return k, nil
		}
	}
}

// The salted scheme is what the operator publishes: PBKDF2-SHA256 of the
// key with a salt of its own per relay and account. A shard, or a backup of
// one, then neither shows which accounts share a key nor lets anyone test a
// guess at the cost of one SHA-256: each guess costs saltedIterations HMACs
// for one account only. Keys a person brings need only 128 bits (32
// characters), so this is what stands between a leaked shard and them.
const (
	saltedScheme = "pbkdf2-sha256:"
	// saltedIterations keeps one comparison near 0.2 ms on an idle 2-core
	// VM (BenchmarkAuthenticateSalted), under a millisecond with the second
	// digest of a rotation's grace period even when the machine is busy.
	// Verifier caches successes, so a client logging in again pays it once.
	saltedIterations = 1000
	// maxSaltedIterations bounds what a shard may ask a relay to compute.
	maxSaltedIterations = 100000
	saltBytes           = 16
)

// DigestSalt is the salt of an account's key on one relay: derived from the
// relay (scope, such as "namespace/name") and the api_user, so the operator
// publishes the same digest every time and a shard changes only when a key
// does.
func DigestSalt(scope, apiUser string) []byte {
	sum := sha256.Sum256([]byte(scope + "\x00" + apiUser))
	return sum[:saltBytes]
}

// SaltedDigest returns the stored form of key under salt:
// "pbkdf2-sha256:<iterations>:<salt hex>:<hash hex>".
func SaltedDigest(key string, salt []byte) string {
	return saltedDigest(key, salt, saltedIterations)
}

func saltedDigest(key string, salt []byte, iterations int) string {
	hash, err := pbkdf2.Key(sha256.New, key, salt, iterations, sha256.Size)
	if err != nil {
		// Only FIPS mode refuses these parameters; no digest then matches.
		return ""
	}
	return saltedScheme + strconv.Itoa(iterations) + ":" + hex.EncodeToString(salt) + ":" + hex.EncodeToString(hash)
}

// parseSalted splits a salted digest; ok is false for anything malformed.
func parseSalted(s string) (iterations int, salt []byte, ok bool) {
	rest, found := strings.CutPrefix(s, saltedScheme)
	if !found {
		return 0, nil, false
	}
	parts := strings.Split(rest, ":")
	if len(parts) != 3 {
		return 0, nil, false
	}
	n, err := strconv.Atoi(parts[0])
	if err != nil || n < 1 || n > maxSaltedIterations || parts[0] != strconv.Itoa(n) {
		return 0, nil, false
	}
	salt, err = hex.DecodeString(parts[1])
	if err != nil || len(salt) == 0 || len(salt) > 64 || !lowerHex(parts[1]) || len(parts[2]) != 2*sha256.Size || !lowerHex(parts[2]) {
		return 0, nil, false
	}
	return n, salt, true
}

// MatchDigest reports whether key hashes to digest, comparing in constant
// time. A digest of an unknown scheme never matches.
func MatchDigest(digest, key string) bool {
	return CompareDigest(digest, key, Digest(key)) == 1
}

// CompareDigest returns 1 when stored is a digest of key and 0 otherwise;
// plain is Digest(key), computed once by the caller. It returns an int
// rather than a bool so callers can fold several results together without a
// data-dependent branch. The branch on the scheme depends on what is
// stored, not on the key.
func CompareDigest(stored, key, plain string) int {
	if strings.HasPrefix(stored, digestScheme) {
		return subtle.ConstantTimeCompare([]byte(stored), []byte(plain))
	}
	iterations, salt, ok := parseSalted(stored)
	if !ok {
		return 0
	}
	return subtle.ConstantTimeCompare([]byte(stored), []byte(saltedDigest(key, salt, iterations)))
}

// ValidDigest reports whether s is a digest as Digest or SaltedDigest
// writes it. Uppercase hex is refused because comparisons are byte-wise:
// such a digest could never match.
func ValidDigest(s string) bool {
	if strings.HasPrefix(s, saltedScheme) {
		_, _, ok := parseSalted(s)
		return ok
	}
	return len(s) == digestLen && strings.HasPrefix(s, digestScheme) && lowerHex(s[len(digestScheme):])
}

func lowerHex(s string) bool {
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
