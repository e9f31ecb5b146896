// Package delivery moves committed messages out of the spool to where they
// are going.
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
	"time"

	"github.com/mailfleet/mailfleet/relay/spool"
)

// DefaultPollInterval bounds how long a committed message waits when nobody
// calls Notify.
const DefaultPollInterval = 200 * time.Millisecond

// Source is what delivery needs from a spool: the committed messages, each
// readable, and a way to drop one once it is delivered. *spool.Log is one.
type Source interface {
	// Pending lists the committed messages not yet removed, oldest first.
	Pending() ([]string, error)
	// Open returns a message's envelope and a reader of its body.
	Open(id string) (spool.Envelope, io.ReadCloser, error)
	// Remove drops a delivered message.
	Remove(id string) error
}

// LocalDir is the development transport: it delivers each spooled message as
// a file mailDir/<id>.eml, made of trace headers followed by the exact body
// the client sent:
//
//	Return-Path: <from>\r\n
//	X-Mailfleet-Account: <apiUser>\r\n
//	X-Mailfleet-Label: <label>\r\n   (only when the message has a label)
//	<body, byte for byte>
//
// A message leaves the spool only after its .eml is durable, and a .eml that
// already exists is never written again, so a crash between the two steps
// neither loses nor duplicates mail. Only one LocalDir may deliver from a
// spool (the spool's lock keeps a second process out).
type LocalDir struct {
	src      Source
	mailDir  string
	log      *slog.Logger
	interval time.Duration
	wake     chan struct{}
	// failed holds the errors of the previous pass by message id, so a
	// message that keeps failing the same way is logged once, not every poll.
	failed map[string]string
}

// NewLocalDir returns a transport from src into mailDir, which Run creates.
func NewLocalDir(src Source, mailDir string, log *slog.Logger) *LocalDir {
	return &LocalDir{
		src:      src,
		mailDir:  mailDir,
		log:      log,
		interval: DefaultPollInterval,
		wake:     make(chan struct{}, 1),
		failed:   make(map[string]string),
	}
}

// Notify wakes Run early, typically right after a commit. It never blocks: a
// wake-up already pending covers this one too.
func (l *LocalDir) Notify() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Run delivers pending messages until ctx ends, then returns nil. A message
// that fails is logged and retried on the next pass; only failing to create
// mailDir is returned.
func (l *LocalDir) Run(ctx context.Context) error {
	if err := os.MkdirAll(l.mailDir, 0o700); err != nil {
		return fmt.Errorf("local delivery to %s: %w", l.mailDir, err)
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-l.wake:
		case <-timer.C:
		}
		l.deliverPending(ctx)
		timer.Reset(l.interval)
	}
}

func (l *LocalDir) deliverPending(ctx context.Context) {
	failing := make(map[string]string)
	defer func() { l.failed = failing }()
	ids, err := l.src.Pending()
	if err != nil {
		l.report(failing, "", err)
		return
	}
	for _, id := range ids {
		if ctx.Err() != nil {
			return
		}
		if err := l.deliver(id); err != nil {
			l.report(failing, id, err)
		}
	}
}

// report logs a failure unless the previous pass logged the same one.
func (l *LocalDir) report(failing map[string]string, id string, err error) {
	msg := err.Error()
	failing[id] = msg
	if l.failed[id] != msg {
		l.log.Error("local delivery failed", "id", id, "err", err)
	}
}

// deliver writes one message. An existing <id>.eml means an earlier run got
// as far as the rename and crashed before removing it from the spool.
func (l *LocalDir) deliver(id string) error {
	final := filepath.Join(l.mailDir, id+".eml")
	if _, err := os.Lstat(final); err == nil {
		// The crash may have come before the directory fsync.
		if err := syncDir(l.mailDir); err != nil {
			return fmt.Errorf("deliver message %s: %w", id, err)
		}
		l.log.Info("message already delivered", "id", id)
		return l.src.Remove(id)
	}
	env, body, err := l.src.Open(id)
	if err != nil {
		return err
	}
	defer body.Close()
	size, err := l.writeFile(final, env, body)
	if err != nil {
		return fmt.Errorf("deliver message %s: %w", id, err)
	}
	if err := l.src.Remove(id); err != nil {
		return err
	}
	l.log.Info("message delivered", "id", id, "apiUser", env.APIUser, "label", env.LabelID,
		"recipients", len(env.To), "bytes", size)
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
