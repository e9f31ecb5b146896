package submission

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"strconv"
	"strings"

	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/smtpd"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// splitHead reads r until the end of the message's header section and
// returns the section, ending in CRLF, and a reader of the rest. The
// section ends at the empty line, or before the first line that is
// neither a field nor a field's continuation (a message without a header
// is all body). It reads into buf and grows beyond it only for a long
// header. A header section over maxHeadBytes is refused: no mail needs
// one, and it is held in memory. A read error is returned with what was
// read, and a rest that ends in it.
func splitHead(r io.Reader, buf []byte) (head []byte, rest io.Reader, err error) {
	data := buf[:0]
	scanned := 0
	for {
		if len(data) == cap(data) {
			data = append(data, make([]byte, len(data))...)[:len(data)]
		}
		n, readErr := r.Read(data[len(data):cap(data)])
		data = data[:len(data)+n]
		end, done := headEnd(data, &scanned)
		switch {
		case end > maxHeadBytes || (!done && len(data) > maxHeadBytes):
			return data, r, errHeadTooLarge
		case done:
			return data[:end], io.MultiReader(bytes.NewReader(data[end:]), r), nil
		case readErr == io.EOF:
			return data, r, nil
		case readErr != nil:
			return data, eofReader{readErr}, readErr
		}
	}
}

// headEnd finds where data's header section ends, reading the complete
// lines from *scanned on and moving it past them.
func headEnd(data []byte, scanned *int) (int, bool) {
	for {
		nl := bytes.IndexByte(data[*scanned:], '\n')
		if nl < 0 {
			return 0, false
		}
		line := data[*scanned : *scanned+nl+1]
		if len(bytes.TrimRight(line, "\r\n")) == 0 || (line[0] != ' ' && line[0] != '\t' && !isFieldLine(line)) {
			return *scanned, true
		}
		*scanned += nl + 1
	}
}

// isFieldLine reports whether line starts a header field: a name of
// printable characters other than ':' (RFC 5322), then a colon.
func isFieldLine(line []byte) bool {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return false
	}
	name := bytes.TrimRight(line[:colon], " \t") // obsolete syntax allows space before the colon
	if len(name) == 0 {
		return false
	}
	for _, c := range name {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}

// errHeadTooLarge is a header section over maxHeadBytes.
var errHeadTooLarge = &smtpd.Error{Reply: smtpd.ReplyHeaderTooLarge}

// eofReader gives err: what ended the message while its header was read.
type eofReader struct{ err error }

func (e eofReader) Read([]byte) (int, error) { return 0, e.err }

// queueSMTPAPI applies an X-SMTPAPI header: its labelId and customArgs to
// the message, its "to" instead of the RCPT TO recipients, and, with
// "sub", one message per address of "to", each with its values. head is
// the header section without the X-SMTPAPI field.
func (s *session) queueSMTPAPI(ctx context.Context, api *smtpAPI, head []byte, rest io.Reader) (string, *rejection) {
	id := *s.identity
	env, subIdx, err := s.applySMTPAPI(api, &id)
	if err != nil {
		return "", s.refuseAfterReading(rest, &rejection{err, ReasonSMTPAPIInvalid})
	}
	// Counted, budgeted and logged as the label the header names.
	login := s.identity
	s.identity = &id
	defer func() { s.identity = login }()
	if len(api.Sub) == 0 {
		return s.queueOne(ctx, env, head, rest)
	}
	m := fanOut{env: env, sub: newSubstituter(api.Sub), subIdx: subIdx, head: string(head)}
	id2, rej := s.queueCopies(ctx, &m, rest)
	if rej != nil {
		s.b.deps.Metrics.rejected(s.identity, rej.reason)
	}
	return id2, rej
}

// applySMTPAPI checks the header against the account and returns the
// message's envelope, with, for each of its recipients, the index of its
// values in sub.
func (s *session) applySMTPAPI(api *smtpAPI, id *credentials.Identity) (spool.Envelope, []int, error) {
	label, err := api.labelID()
	if err == nil {
		err = checkLabel(id, label)
	}
	if err == nil {
		err = api.checkSub()
	}
	if err == nil && api.CustomArgs != nil {
		if e := CheckCustomArgs(api.CustomArgs); e != nil {
			err = smtpAPIError("%s", e.Error())
		}
	}
	if err != nil {
		return spool.Envelope{}, nil, err
	}
	env := s.envelope()
	env.LabelID = id.LabelID
	if api.CustomArgs != nil {
		env.CustomArgs = maps.Clone(api.CustomArgs)
	}
	if len(api.To) == 0 {
		return env, nil, nil
	}
	to, idx, err := s.smtpAPIRecipients(api.To, id.MaxRecipients)
	env.To = to
	return env, idx, err
}

// smtpAPIRecipients checks "to" as RCPT TO addresses are checked, and
// leaves out those the account's suppression list holds (each with its
// event, as a refused RCPT has). It returns the addresses kept and their
// indexes in "to".
func (s *session) smtpAPIRecipients(to []string, most int) ([]string, []int, error) {
	if len(to) > most {
		return nil, nil, smtpAPIError("to: %d addresses; this account may send to at most %d per message", len(to), most)
	}
	var kept []string
	var idx []int
	for i, addr := range to {
		if _, ok := smtpd.ParseMailbox(addr); !ok {
			return nil, nil, smtpAPIError("to[%d] %q is not an address", i, smtpd.PrintableAddress(addr))
		}
		if s.suppressed(addr) {
			continue
		}
		kept, idx = append(kept, addr), append(idx, i)
	}
	if len(kept) == 0 {
		return nil, nil, &smtpd.Error{Reply: smtpd.ReplyRcptSuppressed.With(smtpd.PrintableAddress(to[0])), Err: errSuppressed}
	}
	return kept, idx, nil
}

// fanOut is a message with "sub": one copy per recipient of env, each
// with its values.
type fanOut struct {
	env    spool.Envelope
	sub    substituter
	subIdx []int  // per recipient of env, its index in "to" and in sub's values
	head   string // the header section, without X-SMTPAPI
	body   string // the rest of the message, read whole
}

// queueCopies queues the copies all or none: every copy is substituted
// and checked, then written, then the budget taken for all of them, and
// only then are they committed. The body is read whole first (the SIZE
// limit bounds it) and what the copies write together is bounded
// (maxFanOutBytes), before and after the substitutions.
func (s *session) queueCopies(ctx context.Context, m *fanOut, rest io.Reader) (string, *rejection) {
	var buf strings.Builder
	if _, writeErr, readErr := copyBody(&buf, rest); readErr != nil || writeErr != nil {
		return "", s.bodyRejection(m.env.ID, nil, writeErr, readErr)
	}
	m.body = buf.String()
	if int64(len(m.head)+len(m.body))*int64(len(m.env.To)) > maxFanOutBytes {
		return "", &rejection{&smtpd.Error{Reply: smtpd.ReplyFanOutTooBig.With(maxFanOutBytes)}, ReasonTooBig}
	}
	if rej := s.checkCopyHeads(m); rej != nil {
		return "", rej
	}
	writers, sizes, rej := s.writeCopies(ctx, m)
	if rej == nil {
		rej = s.spend(ctx, len(writers))
	}
	committed := 0
	if rej == nil {
		committed, rej = s.commitCopies(ctx, m, writers)
	}
	// A copy committed is in the queue whatever the reply: its events
	// follow it.
	for i := range committed {
		s.queued(m.copyEnvelope(i, m.env.To[i]), sizes[i])
	}
	if rej != nil {
		for _, w := range writers {
			w.Abort() // a no-op for a copy already committed
		}
		return "", rej
	}
	return m.env.ID, nil
}

// copyEnvelope is the envelope of the i-th copy, to rcpt alone.
func (m *fanOut) copyEnvelope(i int, rcpt string) spool.Envelope {
	env := m.env
	env.ID, env.To = m.env.ID+"-"+strconv.Itoa(i), []string{rcpt}
	return env
}

// checkCopyHeads substitutes each copy's header section and checks it as
// the recipient will see it: a value may rewrite any field, From and the
// field names included, so the From rule and the absence of X-SMTPAPI are
// checked after the substitution, not before. The heads are not kept:
// writeCopies substitutes them again, rather than hold one per copy.
func (s *session) checkCopyHeads(m *fanOut) *rejection {
	for i := range m.env.To {
		head, err := m.copyHead(i)
		if err != nil {
			return &rejection{errHeadTooLarge, ReasonTooBig}
		}
		if _, values := removeField(head, smtpAPIHeader); len(values) > 0 {
			return &rejection{smtpAPIError("sub would write an X-SMTPAPI field into a copy"), ReasonSMTPAPIInvalid}
		}
		if err := headerFromAllowed(s.identity, head); err != nil {
			return &rejection{err, ReasonSenderNotAllowed}
		}
	}
	return nil
}

// copyHead is the i-th copy's header section, substituted; a section
// substituted beyond maxHeadBytes is refused, as one sent so would be.
func (m *fanOut) copyHead(i int) ([]byte, error) {
	var b bytes.Buffer
	left := int64(maxHeadBytes)
	if _, err := m.sub.replacer(m.subIdx[i]).WriteString(cappedWriter{&b, &left}, m.head); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// writeCopies begins and writes every copy, none committed. It returns
// the writers begun, to commit or abort, and each copy's size.
func (s *session) writeCopies(ctx context.Context, m *fanOut) ([]spool.Writer, []int64, *rejection) {
	writers := make([]spool.Writer, 0, len(m.env.To))
	sizes := make([]int64, len(m.env.To))
	left := int64(maxFanOutBytes)
	for i, rcpt := range m.env.To {
		env := m.copyEnvelope(i, rcpt)
		w, err := s.b.deps.Spool.Begin(ctx, env)
		if err != nil {
			s.log.Error("spool unavailable", "id", env.ID, "err", err)
			return writers, nil, &rejection{&smtpd.Error{Reply: smtpd.ReplyQueueDown, Err: fmt.Errorf("copy %s: %w", env.ID, err)}, ReasonQueueDown}
		}
		before := left
		replacer := m.sub.replacer(m.subIdx[i])
		head, err := m.copyHead(i)
		if err == nil {
			w = s.signed(w, head)
			capped := cappedWriter{w, &left}
			_, err = capped.Write(head)
			if err == nil {
				_, err = replacer.WriteString(capped, m.body)
			}
		}
		writers = append(writers, w)
		switch {
		case errors.Is(err, errSubstitutedTooBig):
			return writers, nil, &rejection{&smtpd.Error{Reply: smtpd.ReplyFanOutTooBig.With(maxFanOutBytes)}, ReasonTooBig}
		case err != nil:
			s.log.Error("spool write failed", "id", env.ID, "err", err)
			return writers, nil, &rejection{&smtpd.Error{Reply: smtpd.ReplyQueueDown, Err: fmt.Errorf("copy %s: %w", env.ID, err)}, ReasonQueueDown}
		}
		sizes[i] = before - left
	}
	return writers, sizes, nil
}

// commitCopies commits the written copies in order. A commit that fails
// leaves the copies committed before it queued (the spool cannot take a
// commit back): the client is told 451 and sends the message again, so
// those few are sent twice, never lost; the copies after it are aborted.
// It returns how many were committed.
func (s *session) commitCopies(ctx context.Context, m *fanOut, writers []spool.Writer) (int, *rejection) {
	for i, w := range writers {
		if err := w.Commit(ctx); err != nil {
			s.log.Error("spool commit failed", "id", m.env.ID+"-"+strconv.Itoa(i), "committed", i, "of", len(writers), "err", err)
			return i, &rejection{&smtpd.Error{Reply: smtpd.ReplyQueueDown, Err: fmt.Errorf("copy %d of %s: %w", i, m.env.ID, err)}, ReasonQueueDown}
		}
	}
	return len(writers), nil
}
