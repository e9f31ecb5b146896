package submission

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"strconv"

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
	body := io.MultiReader(bytes.NewReader(head), rest)
	if len(api.Sub) == 0 {
		return s.queueOne(ctx, env, body)
	}
	return s.queueCopies(ctx, env, api.Sub, subIdx, body)
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

// queueCopies queues one message per recipient of env, each with the
// values sub has for it. The body is read whole first (the SIZE limit
// bounds it), and what the copies would write together is bounded too.
// The budget is taken once for all of them. The copies are committed one
// after another: if one fails, the client is told 451 and retries the
// whole message, so the copies committed before it are sent twice, never
// lost.
func (s *session) queueCopies(ctx context.Context, env spool.Envelope, sub map[string][]string, subIdx []int, r io.Reader) (string, *rejection) {
	var buf bytes.Buffer
	if _, writeErr, readErr := copyBody(&buf, r); readErr != nil || writeErr != nil {
		rej := s.bodyRejection(env.ID, nil, writeErr, readErr)
		s.b.deps.Metrics.rejected(s.identity, rej.reason)
		return "", rej
	}
	body := buf.Bytes()
	if int64(len(body))*int64(len(env.To)) > maxFanOutBytes {
		rej := &rejection{&smtpd.Error{Reply: smtpd.ReplyFanOutTooBig.With(maxFanOutBytes)}, ReasonTooBig}
		s.b.deps.Metrics.rejected(s.identity, rej.reason)
		return "", rej
	}
	if rej := s.checkCopies(ctx, body, len(env.To)); rej != nil {
		s.b.deps.Metrics.rejected(s.identity, rej.reason)
		return "", rej
	}
	for i, rcpt := range env.To {
		copyEnv := env
		copyEnv.ID, copyEnv.To = env.ID+"-"+strconv.Itoa(i), []string{rcpt}
		if rej := s.commitCopy(ctx, copyEnv, substitute(body, sub, subIdx[i])); rej != nil {
			s.b.deps.Metrics.rejected(s.identity, rej.reason)
			return "", rej
		}
	}
	return env.ID, nil
}

// checkCopies applies the From rule and takes the budget, one unit per
// copy, before any copy is written.
func (s *session) checkCopies(ctx context.Context, body []byte, copies int) *rejection {
	head, _, _ := bytes.Cut(body, []byte("\r\n\r\n"))
	if err := headerFromAllowed(s.identity, append(head, "\r\n"...)); err != nil {
		return &rejection{err, ReasonSenderNotAllowed}
	}
	return s.spend(ctx, copies)
}

// commitCopy writes and commits one copy.
func (s *session) commitCopy(ctx context.Context, env spool.Envelope, body []byte) *rejection {
	w, err := s.b.deps.Spool.Begin(ctx, env)
	if err == nil {
		if _, err = w.Write(body); err == nil {
			err = w.Commit(ctx)
		}
		if err != nil {
			w.Abort()
		}
	}
	if err != nil {
		s.log.Error("spool a copy of an X-SMTPAPI message", "id", env.ID, "err", err)
		return &rejection{&smtpd.Error{Reply: smtpd.ReplyQueueDown, Err: fmt.Errorf("copy %s: %w", env.ID, err)}, ReasonQueueDown}
	}
	s.queued(env, int64(len(body)))
	return nil
}
