package credentials

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
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

// MatchDigest reports whether key hashes to digest, comparing in constant
// time. A digest of an unknown scheme never matches.
func MatchDigest(digest, key string) bool {
	return compareDigest(digest, Digest(key)) == 1
}

// compareDigest returns 1 when stored equals presented (itself the output of
// Digest) and 0 otherwise. It returns an int rather than a bool so callers can
// fold several results together without a data-dependent branch.
func compareDigest(stored, presented string) int {
	if !strings.HasPrefix(stored, digestScheme) {
		return 0
	}
	return subtle.ConstantTimeCompare([]byte(stored), []byte(presented))
}

// validDigest reports whether s is a digest as Digest writes it. Uppercase
// hex is refused because comparisons are byte-wise: such a digest could never
// match.
func validDigest(s string) bool {
	if len(s) != digestLen || !strings.HasPrefix(s, digestScheme) {
		return false
	}
	for _, c := range s[len(digestScheme):] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
