package delivery

import (
	"context"
	"io"

	"github.com/mailfleet/mailfleet/relay/spool"
)

// Outcome is what became of one recipient.
type Outcome int

const (
	// Delivered: the next hop accepted the recipient and the message.
	Delivered Outcome = iota
	// Deferred: a temporary failure (4xx, connection error, timeout); try again later.
	Deferred
	// Failed: a permanent failure (5xx); the sender gets a bounce.
	Failed
)

// Result is one recipient's outcome and the reply that decided it, as a
// delivery status notification reports it.
type Result struct {
	Recipient string
	Outcome   Outcome
	// Code and Enhanced are the deciding SMTP reply's codes ("250", "5.1.1");
	// for a local error (no connection), Code is 0 and Text says what failed.
	Code     int
	Enhanced string
	Text     string
	// RemoteMTA is the host that answered, when one did.
	RemoteMTA string
	// TLS is what protected that host's session; nil when none answered.
	TLS *TLSResult
}

// Message is a message to hand to the next hop.
type Message struct {
	Envelope spool.Envelope
	Size     int64
	// Open reads the body from its start; a transport may call it once per
	// destination.
	Open func() (io.ReadCloser, error)
}

// Transport hands messages to the next hop.
type Transport interface {
	// Deliver tries every recipient in msg.Envelope.To and returns exactly
	// one Result per recipient, in the same order.
	Deliver(ctx context.Context, msg Message) []Result
}
