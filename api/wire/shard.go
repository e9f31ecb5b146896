package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// MarshalShard encodes accounts in the format ParseShard reads: the
// credentials document, as JSON.
func MarshalShard(accounts []Account) ([]byte, error) {
	if accounts == nil {
		accounts = []Account{}
	}
	if err := Validate(accounts); err != nil {
		return nil, fmt.Errorf("credentials shard: %w", err)
	}
	data, err := json.Marshal(Shard{Accounts: &accounts})
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
	var doc Shard
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("decode credentials shard: %w", err)
	}
	if doc.Version > ShardFormatVersion {
		return nil, fmt.Errorf("credentials shard: format version %d is newer than this relay reads (%d): upgrade the relay", doc.Version, ShardFormatVersion)
	}
	if doc.Accounts == nil {
		return nil, errors.New("credentials shard: missing accounts")
	}
	accounts := *doc.Accounts
	if err := Validate(accounts); err != nil {
		return nil, fmt.Errorf("credentials shard: %w", err)
	}
	for i := range accounts {
		LowercaseDomains(&accounts[i])
	}
	return accounts, nil
}
