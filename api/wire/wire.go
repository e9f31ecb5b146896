// Package wire is the contract between the operator and the relays: every
// format one side writes and the other reads. The operator builds SMTP
// usernames, credentials shards, key digests and queue stream names with
// these functions and the relay parses them with the same ones, so neither
// side spells a format of its own.
//
// It imports only the standard library, so that the relay can depend on it
// without pulling in Kubernetes, and the API types can without pulling in the
// relay. docs/architecture.md ("The contract") describes where each piece is
// used.
package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"
)

// SMTP usernames. A client logs in as "api_user" or "api_user#label_id".
const (
	// LabelSeparator joins an api_user and a label id. IDPattern excludes
	// it, so the first one in a username is the only one.
	LabelSeparator = "#"
	// IDPattern is what api_users and label ids may look like; the CRDs'
	// validation says the same in CEL.
	IDPattern = `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`
)

// Username is what a client types to log in as apiUser, with labelID when it
// is not empty.
func Username(apiUser, labelID string) string {
	if labelID == "" {
		return apiUser
	}
	return apiUser + LabelSeparator + labelID
}

// SplitUsername is Username's inverse. hasLabel tells "api_user#" (a label
// that is empty, and so never active) apart from "api_user".
func SplitUsername(username string) (apiUser, labelID string, hasLabel bool) {
	return strings.Cut(username, LabelSeparator)
}

// What an account that sets nothing gets, and what it may set.
const (
	// DefaultBudgetPerMinute is the budget of an account that sets none,
	// when its relay sets no default either.
	DefaultBudgetPerMinute = 30000
	// DefaultMaxRecipients caps the recipients of one message of an account
	// that sets no cap, as SES does; a client sends the rest in another
	// transaction after 452 4.5.3.
	DefaultMaxRecipients = 100
	// MinKeyLength is the shortest key an account may bring of its own: 32
	// characters carry at least 128 bits as hex, and more in base64.
	MinKeyLength = 32
	// SenderPolicyEnvelope checks only the envelope sender against an
	// account's sender domains; the default checks the header From too.
	SenderPolicyEnvelope = "Envelope"
)

// A relay's credentials are published as ShardCount Secrets in its own
// namespace, each holding the accounts whose api_user hashes to it (ShardOf).
// Sharding keeps each Secret well under the API server's 1 MiB object limit
// at tens of thousands of accounts, and a change rewrites one shard, not all.
const (
	ShardCount = 16
	// ShardDataKey is the key of a shard's content in its Secret.
	ShardDataKey = "credentials.json"
	// ShardLabel selects a relay's shards; its value is the relay's name.
	ShardLabel = "mailfleet.io/credentials-for"
	// ShardFormatVersion is the newest shard format a relay reads. A shard
	// that does not say (every shard so far) is version 1; a relay refuses
	// a newer one rather than misread it, and keeps what it had.
	ShardFormatVersion = 1
)

// Shard is a shard's content, as JSON under ShardDataKey. Accounts is a
// pointer so that a document without the key (cut short while being
// written) is told apart from an explicit empty list.
type Shard struct {
	Version  int        `json:"version,omitempty"`
	Accounts *[]Account `json:"accounts"`
}

// Account is one sender, as the relay sees it.
type Account struct {
	APIUser string `json:"apiUser"`
	// KeyDigests are Digest or SaltedDigest of each valid key: more than
	// one while a rotation's grace period runs.
	KeyDigests           []string `json:"keyDigests"`
	BudgetPerMinute      int      `json:"budgetPerMinute,omitempty"` // 0: DefaultBudgetPerMinute
	MaxRecipients        int      `json:"maxRecipients,omitempty"`   // 0: DefaultMaxRecipients
	AllowedSenderDomains []string `json:"allowedSenderDomains,omitempty"`
	// SenderPolicy is SenderPolicyEnvelope to check only MAIL FROM against
	// AllowedSenderDomains; empty checks the header From too.
	SenderPolicy string  `json:"senderPolicy,omitempty"`
	Suspended    bool    `json:"suspended,omitempty"`
	Labels       []Label `json:"labels,omitempty"`
	// Webhooks receive the account's delivery events.
	Webhooks []Webhook `json:"webhooks,omitempty"`
	// RestrictSenders makes AllowedSenderDomains the whole list even when
	// it is empty: the operator sets it where sender domains must be
	// verified, so that an account none of whose domains is verified
	// sends from none rather than from any.
	RestrictSenders bool `json:"restrictSenders,omitempty"`
	// DKIM are the keys the account signs with: those of the verified
	// sender domains of its namespace that its AllowedSenderDomains use.
	DKIM []DKIMKey `json:"dkim,omitempty"`
	// Suppressions are the recipients its SmtpSuppressions list; the
	// bounces the relays record are kept apart, in JetStream.
	Suppressions []Suppression `json:"suppressions,omitempty"`
}

// Suppression is a recipient an account sends no mail to, from an
// SmtpSuppression.
type Suppression struct {
	// Address is lower case: providers treat addresses without regard to
	// case, and so does the list.
	Address string `json:"address"`
	// Source is the SmtpSuppression, namespace/name.
	Source string `json:"source"`
	Reason string `json:"reason,omitempty"`
	// Until ends it; nil: until the SmtpSuppression goes.
	Until *time.Time `json:"until,omitempty"`
}

// MaxSuppressions bounds an account's suppressions in its shard: about
// 100 bytes each.
const MaxSuppressions = 1000

// CheckSuppression says what is wrong with one entry, nil when the relay
// would use it. The operator leaves a bad entry out, never its account.
func CheckSuppression(s Suppression) error {
	local, domain, ok := strings.Cut(s.Address, "@")
	switch {
	case !ok || local == "" || len(s.Address) > 254 || strings.HasPrefix(domain, "*.") || !domainPattern.MatchString(domain) || s.Address != strings.ToLower(s.Address):
		return fmt.Errorf("address %.60q: want a lower-case address such as someone@example.com", s.Address)
	case strings.ContainsFunc(s.Address+s.Reason+s.Source, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return errors.New("control characters in the address, reason or source")
	case len(s.Reason) > 256 || len(s.Source) > 2*253+1:
		return errors.New("reason over 256 bytes, or source over a namespace/name")
	}
	return nil
}

// Webhook is an endpoint that receives an account's delivery events as
// signed JSON batches (docs/events.md).
type Webhook struct {
	// URL is https:// (http:// only where the relay's config allows it).
	URL string `json:"url"`
	// Events are the event types it receives (WebhookEventTypes); empty
	// means all of them.
	Events []string `json:"events,omitempty"`
	// Secret signs each POST (X-Mailfleet-Signature). The shard holding it
	// is a Secret, as the key digests' are.
	Secret string `json:"secret"`
}

// WebhookEventTypes are the event types a webhook may ask for.
var WebhookEventTypes = []string{"queued", "delivered", "deferred", "bounced", "expired", "suppressed"}

// Limits of an account's webhooks, so that a shard stays small.
const (
	MaxWebhooks         = 10
	MaxWebhookURLLength = 2048
	MinWebhookSecret    = 16
	MaxWebhookSecret    = 256
)

// Label is a sub-identity of an account, used as api_user#label_id.
type Label struct {
	ID        string `json:"id"`
	Suspended bool   `json:"suspended,omitempty"`
}

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

// The durable queue is a JetStream stream per relay. Its subjects are the
// stream's name in lower case followed by one of these.
const (
	// DefaultStream is the stream of a relay run outside Kubernetes.
	DefaultStream = "MAILFLEET"
	// streamPrefix starts the default stream of an SmtpRelay.
	streamPrefix = "MAILFLEET_"
	// MaxStreamName keeps a default stream within the length a chosen one
	// may have.
	MaxStreamName = 128
)

// StreamFor is the default stream of the SmtpRelay namespace/name, one no
// other relay can have: a namespace holds only [a-z0-9-] and a relay name
// only [a-z0-9.-], so upper case keeps them apart from the separator "_",
// and "." (not allowed in a stream name) can become "_" because only the
// name may hold it. An earlier default turned "-" into "_" as well, and
// team-a/mx and team/a-mx shared one stream. Names too long for that get a
// hash instead, which is as distinct in practice.
func StreamFor(namespace, name string) string {
	s := streamPrefix + strings.ToUpper(namespace) + "_" + strings.ToUpper(strings.ReplaceAll(name, ".", "_"))
	if len(s) <= MaxStreamName {
		return s
	}
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	return streamPrefix + hex.EncodeToString(sum[:16])
}

// Subjects are the subjects of a queue stream: in (accepted, not yet
// split per recipient), q (ready to deliver), sched.<time> (waiting for a
// retry), split.<id> (a split in progress), body.<id> (bodies, in a stream of
// their own: BodyStream), events.<type>.<api_user> (delivery events, in a
// stream of their own: EventsStream).
type Subjects struct {
	In, Queue, Sched, Split, Body, Events string
}

// SubjectsOf names the subjects of stream.
func SubjectsOf(stream string) Subjects {
	p := strings.ToLower(stream)
	return Subjects{In: p + ".in", Queue: p + ".q", Sched: p + ".sched", Split: p + ".split", Body: p + ".body", Events: p + ".events"}
}

// BodyStream is the stream holding the bodies of stream's messages.
func BodyStream(stream string) string { return stream + "_BODY" }

// EventsStream is the stream holding the delivery events of stream's
// messages, and WebhooksBucket the key-value bucket in which the relays
// record the webhooks they disabled (an endpoint answered 410 Gone).
func EventsStream(stream string) string { return stream + "_EVENTS" }

// WebhooksBucket: see EventsStream.
func WebhooksBucket(stream string) string { return stream + "_WEBHOOKS" }

// SuppressionsBucket is the key-value bucket of stream's relays in which
// each account's suppressed recipients are kept (relay/suppression).
func SuppressionsBucket(stream string) string { return stream + "_SUPPRESSIONS" }

// WebhookKey names an account's webhook by its api_user and URL, never by
// its secret (a secret rotated keeps the webhook's consumer and what it has
// not yet sent): the relays' consumer and disabled mark, and the entry of
// WebhookStatus the operator looks up.
func WebhookKey(apiUser, url string) string {
	sum := sha256.Sum256([]byte(apiUser + "\x00" + url))
	return "wh_" + hex.EncodeToString(sum[:12])
}

// The relays of an SmtpRelay report the webhooks their endpoints disabled
// (410 Gone) in a ConfigMap of the relay's namespace, the only object they
// may write; the operator turns it into the accounts' WebhookDisabled
// condition.
const (
	// WebhookStatusDataKey holds the WebhookStatus as JSON.
	WebhookStatusDataKey = "webhook-status.json"
	// MaxReportedWebhooks bounds the report, so that the ConfigMap stays
	// far under the API server's object limit.
	MaxReportedWebhooks = 5000
)

// WebhookStatusConfigMapName is the ConfigMap the relays of relay report
// their webhooks in.
func WebhookStatusConfigMapName(relay string) string { return relay + "-webhook-status" }

// WebhookStatus is what the relays report of their webhooks.
type WebhookStatus struct {
	// Disabled are the webhooks whose endpoint answered 410 Gone, by
	// WebhookKey: never a URL or a secret.
	Disabled map[string]DisabledWebhook `json:"disabled"`
}

// DisabledWebhook is a webhook its endpoint disabled.
type DisabledWebhook struct {
	APIUser    string `json:"apiUser"`
	DisabledAt string `json:"disabledAt"` // RFC 3339
	Reason     string `json:"reason"`
}

// ShapingSlotsBucket and ShapingStateBucket are the key-value buckets in
// which stream's relays share the destination groups' open sessions, and
// their messages per minute and pauses (relay/shaping).
func ShapingSlotsBucket(stream string) string { return stream + "_SHAPING_SLOTS" }
func ShapingStateBucket(stream string) string { return stream + "_SHAPING" }
