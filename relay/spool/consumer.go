package spool

import (
	"context"
	"io"
	"time"
)

// Consumer hands committed messages to delivery. A message stays in the
// queue until Done is called for it: a consumer that dies mid-delivery
// leaves it to be handed out again, so a message is delivered at least once.
type Consumer interface {
	// Next blocks until a message is due for delivery or ctx ends.
	Next(ctx context.Context) (Pending, error)
}

// Pending is one committed message being delivered. Exactly one of Done and
// Retry ends it; until then Touch keeps it from being handed to another
// worker.
type Pending interface {
	// Envelope is the message's envelope; To holds only the recipients that
	// are still to be delivered.
	Envelope() Envelope
	// Attempts counts the deliveries already tried (0 on the first).
	Attempts() int
	// Size is the body's length in bytes.
	Size() int64
	// Open reads the body from its start; it may be called more than once
	// (once per destination).
	Open() (io.ReadCloser, error)
	// Touch tells the queue the delivery is still going.
	Touch(ctx context.Context) error
	// Done removes the message: every recipient was delivered or bounced.
	Done(ctx context.Context) error
	// Retry keeps the message for the remaining recipients only and hands
	// it out again after delay. It must be durable before it returns.
	Retry(ctx context.Context, remaining []string, delay time.Duration) error
}
