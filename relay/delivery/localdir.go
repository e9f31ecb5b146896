// Package delivery hands queued messages to the next hop: a smarthost
// (Smarthost), the recipient domains' mail exchangers (MX), or, in
// development, a local directory (LocalDir). Each is a Transport; the
// dispatcher decides what to retry (Backoff) and what to bounce. The network
// transports speak SMTP with relay/smtpclient; this package decides where
// to (MX routes, without special-purpose networks), how many at once per
// domain (DomainLimiter), and what the replies mean (Result).
package delivery

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/mailfleet/mailfleet/relay/spool"
)

// LocalDir is the development transport: it delivers each message as a
// file mailDir/<id>.eml, made of trace headers followed by the exact body
// the client sent:
//
//	Return-Path: <from>\r\n
//	X-Mailfleet-Account: <apiUser>\r\n
//	X-Mailfleet-Label: <label>\r\n   (only when the message has a label)
//	<body, byte for byte>
//
// The .eml is durable before Deliver reports it delivered, and a .eml that
// already exists is never written again, so a crash between writing it and
// acknowledging the message in the queue neither loses nor duplicates mail.
type LocalDir struct {
	mailDir string
	log     *slog.Logger
}

// NewLocalDirTransport returns a transport into mailDir, which Deliver
// creates when missing.
func NewLocalDirTransport(mailDir string, log *slog.Logger) *LocalDir {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &LocalDir{mailDir: mailDir, log: log}
}

// Deliver implements Transport: it writes msg as mailDir/<id>.eml (durably,
// see LocalDir) and delivers every recipient at once, or defers them all
// when the file cannot be written. A .eml that already exists counts as
// delivered, so a retry after a crash does not write the message twice.
func (l *LocalDir) Deliver(_ context.Context, msg Message) []Result {
	id := msg.Envelope.ID
	outcome := func(o Outcome, code int, enhanced, text string) []Result {
		out := make([]Result, len(msg.Envelope.To))
		for i, rcpt := range msg.Envelope.To {
			out[i] = Result{Recipient: rcpt, Outcome: o, Code: code, Enhanced: enhanced, Text: text}
		}
		return out
	}
	if id == "" || id != filepath.Base(id) || strings.HasPrefix(id, ".") {
		return outcome(Deferred, 0, "4.3.0", fmt.Sprintf("message id %q cannot name a file", id))
	}
	final := filepath.Join(l.mailDir, id+".eml")
	if err := l.deliverTo(final, msg); err != nil {
		l.log.Error("local delivery failed", "id", id, "err", err)
		return outcome(Deferred, 0, "4.3.0", err.Error())
	}
	l.log.Info("message delivered", "id", id, "apiUser", msg.Envelope.APIUser, "label", msg.Envelope.LabelID,
		"recipients", len(msg.Envelope.To), "bytes", msg.Size)
	return outcome(Delivered, 250, "2.0.0", "delivered to "+final)
}

func (l *LocalDir) deliverTo(final string, msg Message) error {
	if err := os.MkdirAll(l.mailDir, 0o700); err != nil {
		return fmt.Errorf("local delivery to %s: %w", l.mailDir, err)
	}
	if _, err := os.Lstat(final); err == nil {
		// An earlier try wrote it; the directory fsync may not have run.
		return syncDir(l.mailDir)
	}
	body, err := msg.Open()
	if err != nil {
		return fmt.Errorf("open message %s: %w", msg.Envelope.ID, err)
	}
	defer body.Close()
	if _, err := l.writeFile(final, msg.Envelope, body); err != nil {
		return fmt.Errorf("deliver message %s: %w", msg.Envelope.ID, err)
	}
	return nil
}

// writeFile writes the .eml under a dot name that mail readers skip, and
// makes it durable before it gets its final name. The temporary name is
// fixed per id, so a run that crashed half way leaves nothing behind once
// the message is retried.
func (l *LocalDir) writeFile(final string, env spool.Envelope, body io.Reader) (int64, error) {
	tmp := filepath.Join(l.mailDir, "."+filepath.Base(final)+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	size, err := writeMessage(f, env, body)
	if err == nil {
		err = f.Sync()
	}
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		return 0, errors.Join(err, removeIfExists(tmp))
	}
	return size, syncDir(l.mailDir)
}

// writeMessage writes the trace headers and the body, returning the body size.
func writeMessage(w io.Writer, env spool.Envelope, body io.Reader) (int64, error) {
	bw := bufio.NewWriterSize(w, 64<<10)
	bw.WriteString(traceHeaders(env))
	n, err := io.Copy(bw, body)
	if err != nil {
		return n, err
	}
	return n, bw.Flush()
}

// traceHeaders renders the headers a local delivery agent prepends. Values
// come from the SMTP envelope and login, so control characters are dropped:
// a CR or LF there would let a client forge headers.
func traceHeaders(env spool.Envelope) string {
	var b strings.Builder
	b.WriteString("Return-Path: <" + headerValue(env.From) + ">\r\n")
	b.WriteString("X-Mailfleet-Account: " + headerValue(env.APIUser) + "\r\n")
	if env.LabelID != "" {
		b.WriteString("X-Mailfleet-Label: " + headerValue(env.LabelID) + "\r\n")
	}
	b.WriteString(env.Prepend) // the DKIM signatures made at submission
	return b.String()
}

func headerValue(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(f.Sync(), f.Close())
}
