package credentials

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
)

// A fleet's credentials are published by the operator as shards: Secrets in
// the relay's own namespace, each holding the accounts whose api_user hashes
// to it. Sharding keeps each Secret well under the API server's 1 MiB object
// limit at tens of thousands of accounts, and a change rewrites one shard,
// not all of them.
const (
	// ShardCount is how many shards a relay's credentials are split into.
	ShardCount = 16
	// ShardDataKey is the key of a shard's content in its Secret.
	ShardDataKey = "credentials.json"
	// ShardLabel selects a relay's shards; its value is the relay's name.
	ShardLabel = "mailfleet.io/credentials-for"
)

// shardInfix separates the relay's name from the shard number in a shard
// Secret's name.
const shardInfix = "-credentials-"

// ShardSecretName is the name of a relay's shard Secret. The names are
// fixed, so the relay's Role can name each one (resourceNames) and a relay
// reads no other Secret.
func ShardSecretName(relay string, shard int) string {
	return fmt.Sprintf("%s%s%02d", relay, shardInfix, shard)
}

// ParseShardSecretName is ShardSecretName's inverse.
func ParseShardSecretName(name string) (relay string, shard int, ok bool) {
	i := strings.LastIndex(name, shardInfix)
	if i <= 0 {
		return "", 0, false
	}
	n, err := strconv.Atoi(name[i+len(shardInfix):])
	if err != nil || n < 0 || n >= ShardCount || name != ShardSecretName(name[:i], n) {
		return "", 0, false
	}
	return name[:i], n, true
}

// ShardSecretNames are all of a relay's shard Secrets.
func ShardSecretNames(relay string) []string {
	names := make([]string, ShardCount)
	for i := range names {
		names[i] = ShardSecretName(relay, i)
	}
	return names
}

// ShardOf returns the shard an api_user belongs to.
func ShardOf(apiUser string) int {
	h := fnv.New32a()
	h.Write([]byte(apiUser))
	return int(h.Sum32() % ShardCount)
}

// MarshalShard encodes accounts in the format ParseShard reads: the
// credentials document, as JSON.
func MarshalShard(accounts []Account) ([]byte, error) {
	if accounts == nil {
		accounts = []Account{}
	}
	if err := validate(accounts); err != nil {
		return nil, fmt.Errorf("credentials shard: %w", err)
	}
	data, err := json.Marshal(document{Accounts: &accounts})
	if err != nil {
		return nil, fmt.Errorf("encode credentials shard: %w", err)
	}
	return data, nil
}

// ParseShard decodes and validates a shard. It reads JSON only, with the
// standard decoder: a shard is machine-written, and at thousands of accounts
// the YAML path of Parse costs several times more per change.
func ParseShard(data []byte) ([]Account, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var doc document
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("decode credentials shard: %w", err)
	}
	if doc.Accounts == nil {
		return nil, errors.New("credentials shard: missing accounts")
	}
	accounts := *doc.Accounts
	if err := validate(accounts); err != nil {
		return nil, fmt.Errorf("credentials shard: %w", err)
	}
	for i := range accounts {
		lowercaseDomains(&accounts[i])
	}
	return accounts, nil
}
