package controllers

import (
	"testing"

	"github.com/mailfleet/mailfleet/relay/credentials"
)

// TestShardNames checks that a shard request's name, which is its Secret's
// name, gives back the relay and the shard, and that no other name does.
func TestShardNames(t *testing.T) {
	for _, relay := range []string{"mx", "a-credentials-b", "mx-credentials-01"} {
		for shard := range credentials.ShardCount {
			r, s, ok := parseShardName(ShardName(relay, shard))
			if !ok || r != relay || s != shard {
				t.Errorf("parseShardName(ShardName(%q, %d)) = %q, %d, %v", relay, shard, r, s, ok)
			}
		}
	}
	for _, name := range []string{"mx", "-credentials-01", "mx-credentials-", "mx-credentials-x", "mx-credentials-16", "mx-credentials--1"} {
		if r, s, ok := parseShardName(name); ok {
			t.Errorf("parseShardName(%q) = %q, %d, true; want false", name, r, s)
		}
	}
}
