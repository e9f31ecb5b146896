package wire

import "testing"

// TestShardSecretNames checks that a shard request's name, which is its Secret's
// name, gives back the relay and the shard, and that no other name does.
func TestShardSecretNames(t *testing.T) {
	for _, relay := range []string{"mx", "a-credentials-b", "mx-credentials-01"} {
		for shard := range ShardCount {
			r, s, ok := ParseShardSecretName(ShardSecretName(relay, shard))
			if !ok || r != relay || s != shard {
				t.Errorf("ParseShardSecretName(ShardSecretName(%q, %d)) = %q, %d, %v", relay, shard, r, s, ok)
			}
		}
	}
	for _, name := range []string{"mx", "-credentials-01", "mx-credentials-", "mx-credentials-x", "mx-credentials-16", "mx-credentials--1", "mx-credentials-1"} {
		if r, s, ok := ParseShardSecretName(name); ok {
			t.Errorf("ParseShardSecretName(%q) = %q, %d, true; want false", name, r, s)
		}
	}
}
