// Package spool keeps accepted messages until they are delivered. A message is
// acknowledged to the SMTP client only after Commit returned nil, so Commit
// must not return before the message would survive a power loss.
package spool

import (
	"context"
	"io"
	"time"
)

// Envelope is the metadata that travels with a message.
type Envelope struct {
	ID         string    `json:"id"`
	APIUser    string    `json:"apiUser"`
	LabelID    string    `json:"labelId,omitempty"`
	From       string    `json:"from"`
	To         []string  `json:"to"`
	ReceivedAt time.Time `json:"receivedAt"`
	RemoteAddr string    `json:"remoteAddr,omitempty"`
	Helo       string    `json:"helo,omitempty"`
	TLS        bool      `json:"tls,omitempty"`
	// TLSVersion is the client session's TLS version ("TLSv1.3"), for the
	// Received field.
	TLSVersion string `json:"tlsVersion,omitempty"`
	// Via is the door the message came in by: empty for SMTP, ViaHTTP for
	// the HTTP send API (the Received header says which).
	Via string `json:"via,omitempty"`
	// CustomArgs are the sender's own key-value pairs (the HTTP API's
	// customArgs), kept for the events a message produces; never delivered.
	CustomArgs map[string]string `json:"customArgs,omitempty"`
	// Prepend is header fields the relay added at submission (its DKIM
	// signatures), each ending in CRLF. Every delivery writes them before
	// the message, so that a retry sends the bytes the first try did.
	Prepend string `json:"prepend,omitempty"`
}

// ViaHTTP marks a message submitted through the HTTP send API.
const ViaHTTP = "http"

// Spool accepts messages.
type Spool interface {
	// Begin starts a message; the body is written to the returned Writer as it arrives.
	Begin(ctx context.Context, env Envelope) (Writer, error)
}

// Writer receives one message body.
type Writer interface {
	io.Writer
	// Commit makes the message durable. Only after it returns nil may the
	// message be acknowledged.
	Commit(ctx context.Context) error
	// Abort drops the message; it is safe to call after Commit (a no-op then).
	Abort() error
	// Prepend adds header fields to the envelope's Prepend, before Commit.
	Prepend(fields string)
}
