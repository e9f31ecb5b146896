package wire

import (
	"strings"
	"testing"
)

// What the publisher leaves out of a shard, one account at a time.
func TestCheckAccount(t *testing.T) {
	good := Account{APIUser: "shop", KeyDigests: []string{Digest("0123456789abcdef0123456789abcdef")}, AllowedSenderDomains: []string{"shop.example"}}
	if err := CheckAccount(good); err != nil {
		t.Fatalf("valid account: %v", err)
	}
	bad := good
	bad.AllowedSenderDomains = []string{strings.Repeat("a", 64) + ".example"}
	if err := CheckAccount(bad); err == nil || !strings.Contains(err.Error(), "allowedSenderDomains[0]") {
		t.Fatalf("label over 63 characters: %v", err)
	}
}
