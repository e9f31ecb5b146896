// Package events records what became of each recipient of each message,
// for the account that sent it: queued, delivered, deferred, bounced,
// expired (and, once a suppression list exists, suppressed). Events are
// written to a JetStream stream of their own beside the queue's, from
// which webhook dispatchers post them to the accounts' endpoints.
//
// An event never carries the message's body, nor anything of the
// account's key: only the envelope's identities, the recipient and the
// reply of the server that decided.
package events

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"time"

	"github.com/mailfleet/mailfleet/relay/delivery"
	"github.com/mailfleet/mailfleet/relay/dsn"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// Type is what happened to a recipient.
type Type string

// The event types. Suppressed is a recipient on the account's suppression
// list: refused at submission (no queue id), or left out of a queued
// message's delivery.
const (
	Queued     Type = "queued"
	Delivered  Type = "delivered"
	Deferred   Type = "deferred"
	Bounced    Type = "bounced"
	Expired    Type = "expired"
	Suppressed Type = "suppressed"
)

// Types are the known event types, in the order a message meets them.
var Types = []Type{Queued, Delivered, Deferred, Bounced, Expired, Suppressed}

// Known reports whether t is one of Types.
func Known(t string) bool {
	for _, k := range Types {
		if string(k) == t {
			return true
		}
	}
	return false
}

// Reply is the SMTP reply that decided a delivered, deferred, bounced or
// expired event. Code is 0 when no server answered (a connection that
// failed); Text then says what failed.
type Reply struct {
	Code      int    `json:"code,omitempty"`
	Enhanced  string `json:"enhanced,omitempty"`
	Text      string `json:"text,omitempty"`
	RemoteMTA string `json:"remoteMta,omitempty"`
	// TLS is what protected the session with RemoteMTA.
	TLS *TLS `json:"tls,omitempty"`
}

// TLS is what protected a session with a next hop.
type TLS struct {
	// Version is "TLSv1.3", "TLSv1.2" or "none".
	Version string `json:"version"`
	// Verified: the certificate verified for the host's name.
	Verified bool `json:"verified"`
	// Policy is where the TLS mode came from: opportunistic, configured,
	// mta-sts, mta-sts-testing or smarthost.
	Policy string `json:"policy"`
}

// Event is one recipient's event, as the stream stores it and webhooks
// receive it.
type Event struct {
	// ID is the same whenever the same thing is reported again (a message
	// delivered again after a crash), so that a receiver can drop what it
	// has seen: see NewID.
	ID        string `json:"id"`
	Type      Type   `json:"type"`
	QueueID   string `json:"queueId"`
	APIUser   string `json:"apiUser"`
	LabelID   string `json:"labelId,omitempty"`
	Recipient string `json:"recipient"`
	// CustomArgs are the sender's own values for the message, as the HTTP
	// API's customArgs gave them (SMTP has none until X-SMTPAPI); an empty
	// object when there are none, but always present.
	CustomArgs map[string]any `json:"customArgs"`
	Timestamp  time.Time      `json:"timestamp"`
	// Attempt is the delivery attempt the event reports, from 1; 0 for
	// queued.
	Attempt int    `json:"attempt"`
	Reply   *Reply `json:"reply,omitempty"`
	// NextAttempt is when a deferred recipient is tried again.
	NextAttempt *time.Time `json:"nextAttempt,omitempty"`
	// DSNStatus is the RFC 3463 status of a bounced or expired recipient,
	// the one its delivery status notification reports (relay/dsn).
	DSNStatus string `json:"dsnStatus,omitempty"`
}

// NewID names the event of type t for one recipient of one message at one
// attempt: a digest of the four, so that reporting it again gives the same
// id, and JetStream (Nats-Msg-Id) and receivers can drop the copy.
func NewID(queueID string, t Type, recipient string, attempt int) string {
	h := sha256.New()
	for _, part := range []string{queueID, string(t), recipient, strconv.Itoa(attempt)} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return "ev_" + hex.EncodeToString(h.Sum(nil)[:16])
}

// QueuedEvents are the events of a message whose queue write was just
// acknowledged: one per recipient.
func QueuedEvents(env spool.Envelope, at time.Time) []Event {
	out := make([]Event, len(env.To))
	for i, rcpt := range env.To {
		out[i] = newEvent(Queued, env, rcpt, 0, at)
	}
	return out
}

// FromResult is the event of type t that a delivery result reports, at
// attempt (from 1). next is when a deferred recipient is tried again.
func FromResult(t Type, env spool.Envelope, r delivery.Result, attempt int, at, next time.Time) Event {
	ev := newEvent(t, env, r.Recipient, attempt, at)
	ev.Reply = &Reply{Code: r.Code, Enhanced: r.Enhanced, Text: r.Text, RemoteMTA: r.RemoteMTA}
	if r.TLS != nil {
		ev.Reply.TLS = &TLS{Version: r.TLS.Version, Verified: r.TLS.Verified, Policy: r.TLS.Policy}
	}
	switch t {
	case Deferred:
		n := next.UTC()
		ev.NextAttempt = &n
	case Bounced, Expired:
		ev.DSNStatus = dsn.FromResult(r, at).Status
	}
	return ev
}

// RefusedSuppressed is the event of a recipient refused at submission
// because it is suppressed. It belongs to no queued message. Its id names
// the account, the recipient and the minute: a client that tries the
// address again and again (each refusal costs it no budget) makes one
// event a minute, not one per try, since the stream and the receivers
// drop copies of an id.
func RefusedSuppressed(apiUser, labelID, rcpt string, at time.Time) Event {
	minute := at.UTC().Truncate(time.Minute).Format(time.RFC3339)
	return Event{
		ID: NewID("refused/"+apiUser+"/"+minute, Suppressed, rcpt, 0), Type: Suppressed,
		APIUser: apiUser, LabelID: labelID, Recipient: rcpt, CustomArgs: map[string]any{}, Timestamp: at.UTC(),
		Reply: &Reply{Code: 550, Enhanced: "5.1.1", Text: "recipient suppressed: earlier mail to it bounced"},
	}
}

func newEvent(t Type, env spool.Envelope, rcpt string, attempt int, at time.Time) Event {
	return Event{
		ID: NewID(env.ID, t, rcpt, attempt), Type: t, QueueID: env.ID,
		APIUser: env.APIUser, LabelID: env.LabelID, Recipient: rcpt,
		CustomArgs: customArgs(env), Timestamp: at.UTC(), Attempt: attempt,
	}
}

func customArgs(env spool.Envelope) map[string]any {
	args := make(map[string]any, len(env.CustomArgs))
	for k, v := range env.CustomArgs {
		args[k] = v
	}
	return args
}
