// Package suppression keeps each account's suppressed recipients: the
// addresses a remote server refused for good (a hard bounce), to which the
// relay sends nothing more until the entry expires. Mailbox providers
// count mail sent again and again to addresses that do not exist against
// the sender's reputation, and blocklist the IPs it comes from.
//
// The list is a JetStream key-value bucket beside the queue's streams,
// shared by every relay of the fleet and kept across restarts. A relay
// checks it at RCPT (and the HTTP API's recipients) and again before each
// delivery attempt, for messages queued before the address bounced.
package suppression

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfleet/mailfleet/api/wire"
)

// DefaultTTL is how long a hard bounce keeps its address suppressed, as
// long as the large senders' lists keep one.
const DefaultTTL = 30 * 24 * time.Hour

// Reasons an address is suppressed.
const (
	ReasonBounce = "bounce"
)

// Entry is a suppressed recipient of one account. It names the message
// and reply that suppressed it, never a body.
type Entry struct {
	Recipient string    `json:"recipient"`
	Reason    string    `json:"reason"`
	QueueID   string    `json:"queueId,omitempty"`
	Reply     string    `json:"reply,omitempty"`
	DSNStatus string    `json:"dsnStatus,omitempty"`
	At        time.Time `json:"at"`
	// Source and Note are a manual entry's: its SmtpSuppression
	// (namespace/name) and the reason a person gave; Until when it ends.
	Source string     `json:"source,omitempty"`
	Note   string     `json:"note,omitempty"`
	Until  *time.Time `json:"until,omitempty"`
}

// ReasonManual is the Reason of an entry from an SmtpSuppression.
const ReasonManual = "manual"

// List is the suppression list of a queue stream's relays.
type List struct {
	kv   jetstream.KeyValue
	ttl  time.Duration
	keys keyCache
}

// Open makes or updates the bucket. Entries expire ttl after they were
// last written (default DefaultTTL).
func Open(ctx context.Context, conn *nats.Conn, stream string, replicas int, ttl time.Duration) (*List, error) {
	if ttl == 0 {
		ttl = DefaultTTL
	}
	js, err := jetstream.New(conn)
	if err != nil {
		return nil, fmt.Errorf("suppression: jetstream: %w", err)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      wire.SuppressionsBucket(stream),
		Description: "mailfleet: recipients each account sends no more mail to (hard bounces)",
		TTL:         ttl,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("suppression: key-value bucket: %w", err)
	}
	return &List{kv: kv, ttl: ttl}, nil
}

// Key names an account's entry for a recipient. A key may hold only a
// few characters and the address is the sender's to choose, so both are
// encoded: the api_user in hex (as events' subjects do), the address as a
// digest of its lower-case form (providers treat local parts without
// regard to case, and so does the list).
func Key(apiUser, recipient string) string {
	sum := sha256.Sum256([]byte(strings.ToLower(recipient)))
	return "u" + hex.EncodeToString([]byte(apiUser)) + "." + hex.EncodeToString(sum[:20])
}

// Add suppresses e.Recipient for apiUser, or renews its entry.
func (l *List) Add(ctx context.Context, apiUser string, e Entry) error {
	data, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("suppression: encode: %w", err)
	}
	if _, err := l.kv.Put(ctx, Key(apiUser, e.Recipient), data); err != nil {
		return fmt.Errorf("suppression: add: %w", err)
	}
	return nil
}

// Lookup returns apiUser's entry for recipient, if it has one.
func (l *List) Lookup(ctx context.Context, apiUser, recipient string) (Entry, bool, error) {
	key := Key(apiUser, recipient)
	if l.keys.absent(key, l.ttl, time.Now()) {
		return Entry{}, false, nil
	}
	v, err := l.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return Entry{}, false, nil
	case err != nil:
		return Entry{}, false, fmt.Errorf("suppression: look up: %w", err)
	}
	var e Entry
	if err := json.Unmarshal(v.Value(), &e); err != nil {
		return Entry{}, false, fmt.Errorf("suppression: decode: %w", err)
	}
	return e, true, nil
}

// Remove lifts apiUser's suppression of recipient.
func (l *List) Remove(ctx context.Context, apiUser, recipient string) error {
	if err := l.kv.Purge(ctx, Key(apiUser, recipient)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("suppression: remove: %w", err)
	}
	return nil
}

// Page returns up to n of apiUser's entries in the order they were
// written, after revision after (0: from the first), and the revision of
// the last one returned; more says a next page may hold entries. A page
// reads at most n entries, however many the account has.
func (l *List) Page(ctx context.Context, apiUser string, after uint64, n int) (entries []Entry, last uint64, more bool, err error) {
	w, err := l.kv.Watch(ctx, "u"+hex.EncodeToString([]byte(apiUser))+".*", jetstream.IgnoreDeletes(), jetstream.ResumeFromRevision(after+1))
	if err != nil {
		return nil, 0, false, fmt.Errorf("suppression: list: %w", err)
	}
	defer w.Stop()
	last = after
	for {
		select {
		case <-ctx.Done():
			return nil, 0, false, fmt.Errorf("suppression: list: %w", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok || e == nil {
				return entries, last, false, nil
			}
			last = e.Revision()
			var entry Entry
			if json.Unmarshal(e.Value(), &entry) != nil {
				continue
			}
			if l.ttl > 0 && time.Since(e.Created()) > l.ttl {
				continue
			}
			entries = append(entries, entry)
			if len(entries) == n {
				return entries, last, true, nil
			}
		}
	}
}
