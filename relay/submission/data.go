package submission

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/mailfleet/mailfleet/relay/budget"
	"github.com/mailfleet/mailfleet/relay/smtpd"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// rejection is a refused message: the error the engine answers, and the
// reason it is counted under.
type rejection struct {
	err    error
	reason string
}

// Data spools the body and commits it only once every check has passed:
// the engine acknowledges a message on Data's nil alone. Every other path
// aborts the spooled copy, so only a 250 leaves a message behind.
func (s *session) Data(ctx context.Context, r io.Reader) (string, error) {
	id, rej := s.queue(ctx, r)
	if rej != nil {
		return "", rej.err
	}
	return id, nil
}

// queue is Data for both doors, SMTP and the HTTP API: it returns the
// queue id, or why the message was refused, counted. The header section
// is read first, so that an X-SMTPAPI field can be taken out of it before
// anything is spooled; a message without one streams on as it came.
func (s *session) queue(ctx context.Context, r io.Reader) (string, *rejection) {
	if len(s.rcpts) == 0 && s.dropped > 0 {
		return s.dropAll(r)
	}
	bp := copyBuffers.Get().(*[32 << 10]byte)
	defer copyBuffers.Put(bp)
	head, rest, headErr := splitHead(r, bp[:])
	switch {
	case headErr == errHeadTooLarge:
		return "", s.refuseAfterReading(rest, &rejection{headErr, ReasonTooBig})
	case headErr != nil:
		// rest ends with headErr: spooled and refused as that.
		return s.queueOne(ctx, s.envelope(), head, rest)
	}
	head, api, err := takeSMTPAPI(head)
	if err != nil {
		return "", s.refuseAfterReading(rest, &rejection{err, ReasonSMTPAPIInvalid})
	}
	if api == nil {
		return s.queueOne(ctx, s.envelope(), head, rest)
	}
	return s.queueSMTPAPI(ctx, api, head, rest)
}

// queueOne spools one message with envelope env: its header section head,
// then the rest.
func (s *session) queueOne(ctx context.Context, env spool.Envelope, head []byte, rest io.Reader) (string, *rejection) {
	w, beginErr := s.b.deps.Spool.Begin(ctx, env)
	if beginErr != nil {
		s.log.Error("spool unavailable", "id", env.ID, "err", beginErr)
		// The body is still read to its end, so that what ends the
		// message is known: a connection lost meanwhile counts as that.
		w = spool.Uncommittable()
	} else {
		w = s.signed(w, head)
	}
	size, rej := s.receive(ctx, env, w, io.MultiReader(bytes.NewReader(head), rest), beginErr)
	if rej != nil {
		w.Abort()
		s.b.deps.Metrics.rejected(s.identity, rej.reason)
		return "", rej
	}
	s.queued(env, size)
	return env.ID, nil
}

// queued counts, reports and logs a message the queue acknowledged.
func (s *session) queued(env spool.Envelope, size int64) {
	s.b.deps.Metrics.accepted(s.identity, size)
	if s.b.deps.Events != nil {
		s.b.deps.Events.Queued(env)
	}
	s.log.Info("message queued", "id", env.ID, "account", env.APIUser, "label", env.LabelID,
		"recipients", len(env.To), "bytes", size, "tls", env.TLS)
}

// dropAll reads a message whose every recipient was suppressed and dropped
// and answers as if it were queued, under an id of its own that no event
// but the recipients' suppressed ones names: nothing is spooled, nothing
// spent.
func (s *session) dropAll(r io.Reader) (string, *rejection) {
	if _, _, readErr := copyBody(io.Discard, r); readErr != nil {
		rej := s.bodyRejection("", nil, nil, readErr)
		s.b.deps.Metrics.rejected(s.identity, rej.reason)
		return "", rej
	}
	id := s.b.deps.IDs.Next()
	s.b.deps.Metrics.dropped(s.identity)
	s.log.Info("message dropped: every recipient is suppressed", "id", id, "account", s.identity.APIUser, "recipients", s.dropped)
	return id, nil
}

// refuseAfterReading reads the rest of a refused message to its end: a
// connection lost meanwhile is what ended it, and nobody hears a reply.
func (s *session) refuseAfterReading(rest io.Reader, rej *rejection) *rejection {
	if _, _, readErr := copyBody(io.Discard, rest); readErr != nil {
		if found := s.bodyRejection("", nil, nil, readErr); found != nil {
			rej = found
		}
	}
	s.b.deps.Metrics.rejected(s.identity, rej.reason)
	return rej
}

func (s *session) envelope() spool.Envelope {
	return spool.Envelope{
		ID:         s.b.deps.IDs.Next(),
		APIUser:    s.identity.APIUser,
		LabelID:    s.identity.LabelID,
		From:       s.from,
		To:         slices.Clone(s.rcpts),
		ReceivedAt: time.Now().UTC(),
		RemoteAddr: s.conn.Remote.String(),
		Helo:       s.conn.Helo,
		TLS:        s.conn.TLS,
		TLSVersion: s.conn.TLSVersion,
		CustomArgs: s.customArgs,
		Via:        s.via,
	}
}

// receive copies the body into w and runs the checks that need it, then
// the budget, then the commit; it returns the stored size.
func (s *session) receive(ctx context.Context, env spool.Envelope, w spool.Writer, r io.Reader, beginErr error) (int64, *rejection) {
	header := &headerCapture{w: w}
	size, writeErr, readErr := copyBody(header, r)
	if rej := s.bodyRejection(env.ID, beginErr, writeErr, readErr); rej != nil {
		return 0, rej
	}
	if err := headerFromAllowed(s.identity, header.bytes()); err != nil {
		return 0, &rejection{err, ReasonSenderNotAllowed}
	}
	if rej := s.spend(ctx, len(env.To)); rej != nil {
		return 0, rej
	}
	if err := w.Commit(ctx); err != nil {
		s.log.Error("spool commit failed", "id", env.ID, "err", err)
		return 0, &rejection{&smtpd.Error{Reply: smtpd.ReplyQueueDown, Err: err}, ReasonQueueDown}
	}
	return size, nil
}

// bodyRejection says how a body that did not arrive whole ended, the
// most telling first: a lost connection (nobody hears a reply), a spool
// that could not keep it, then the limit the engine refused it for.
func (s *session) bodyRejection(id string, beginErr, writeErr, readErr error) *rejection {
	_, limit := errors.AsType[*smtpd.Error](readErr)
	switch {
	case readErr != nil && !limit:
		return &rejection{fmt.Errorf("message %s: %w", id, readErr), ReasonInterrupted}
	case beginErr != nil || writeErr != nil:
		if writeErr != nil {
			s.log.Error("spool write failed", "id", id, "err", writeErr)
		}
		return &rejection{&smtpd.Error{Reply: smtpd.ReplyQueueDown, Err: errors.Join(beginErr, writeErr)}, ReasonQueueDown}
	case errors.Is(readErr, smtpd.ErrMessageTooBig):
		return &rejection{readErr, ReasonTooBig}
	case readErr != nil:
		return &rejection{readErr, ReasonLineTooLong}
	}
	return nil
}

// spend takes one unit of the account's budget per recipient.
func (s *session) spend(ctx context.Context, recipients int) *rejection {
	id := s.identity
	req := budget.Request{APIUser: id.APIUser, LabelID: id.LabelID, Limit: id.BudgetPerMinute, Hits: recipients}
	switch s.b.deps.Budget.Take(ctx, req) {
	case budget.OverLimit:
		return &rejection{&smtpd.Error{Reply: smtpd.ReplyFrequency}, ReasonOverBudget}
	case budget.Unavailable:
		return &rejection{&smtpd.Error{Reply: smtpd.ReplyBudgetDown}, ReasonBudgetDown}
	}
	return nil
}

// copyBuffers are copyBody's buffers, shared by every session: a buffer
// made per message is a large allocation per message, and at tens of
// thousands of messages a second the collector's work halved what a session
// that sends many messages could submit (BenchmarkSubmit).
var copyBuffers = sync.Pool{New: func() any { return new([32 << 10]byte) }}

// copyBody copies r into w, and goes on reading to the end after w fails:
// how the body ended decides which reason a refused message counts under.
// It returns the bytes w took.
func copyBody(w io.Writer, r io.Reader) (size int64, writeErr, readErr error) {
	bp := copyBuffers.Get().(*[32 << 10]byte)
	defer copyBuffers.Put(bp)
	buf := bp[:]
	for {
		n, err := r.Read(buf)
		if n > 0 && writeErr == nil {
			m, werr := w.Write(buf[:n])
			size += int64(m)
			writeErr = werr
		}
		if err == io.EOF {
			return size, writeErr, nil
		}
		if err != nil {
			return size, writeErr, err
		}
	}
}
