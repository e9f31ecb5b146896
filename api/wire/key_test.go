package wire

import (
	"encoding/base64"
	"strings"
	"testing"
)

func TestDigest(t *testing.T) {
	tests := []struct {
		key  string
		want string
	}{
		// Known SHA-256 values, so a change of hash or encoding is caught.
		{"", "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		{"abc", "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			if got := Digest(tt.key); got != tt.want {
				t.Errorf("Digest(%q) = %q, want %q", tt.key, got, tt.want)
			}
			if !ValidDigest(Digest(tt.key)) {
				t.Errorf("Digest(%q) is not accepted by ValidDigest", tt.key)
			}
		})
	}
}

func TestNewKey(t *testing.T) {
	a, b := newTestKey(t), newTestKey(t)
	if a == b {
		t.Fatalf("two calls returned the same key %q", a)
	}
	raw, err := base64.RawURLEncoding.DecodeString(a)
	if err != nil {
		t.Fatalf("key %q is not unpadded base64url: %v", a, err)
	}
	if len(raw) != keyBytes {
		t.Errorf("key decodes to %d bytes, want %d", len(raw), keyBytes)
	}
}

// TestNewKeyStartsWithAlphanumeric: one key in 64 used to start with '-',
// which swaks (and most command lines) take for an option.
func TestNewKeyStartsWithAlphanumeric(t *testing.T) {
	for _, n := range []int{16, 32} {
		for range 2000 {
			k, err := NewKeyOfSize(n)
			if err != nil {
				t.Fatal(err)
			}
			if c := k[0]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
				t.Fatalf("key %q starts with %q", k, c)
			}
			if raw, err := base64.RawURLEncoding.DecodeString(k); err != nil || len(raw) != n {
				t.Fatalf("key %q: %d bytes, %v; want %d", k, len(raw), err, n)
			}
		}
	}
}

func TestMatchDigest(t *testing.T) {
	key := "correct horse"
	good := Digest(key)
	tests := []struct {
		name   string
		digest string
		key    string
		want   bool
	}{
		{"match", good, key, true},
		{"wrong key", good, "wrong", false},
		{"unknown scheme", "md5:" + strings.TrimPrefix(good, digestScheme), key, false},
		{"no scheme", strings.TrimPrefix(good, digestScheme), key, false},
		{"uppercase hex", digestScheme + strings.ToUpper(strings.TrimPrefix(good, digestScheme)), key, false},
		{"truncated", good[:len(good)-1], key, false},
		{"empty digest", "", key, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := MatchDigest(tt.digest, tt.key); got != tt.want {
				t.Errorf("MatchDigest(%q, %q) = %v, want %v", tt.digest, tt.key, got, tt.want)
			}
		})
	}
}

func newTestKey(t testing.TB) string {
	t.Helper()
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
