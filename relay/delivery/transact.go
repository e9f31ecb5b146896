package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/mailfleet/mailfleet/relay/smtpclient"
)

// Classify maps an SMTP reply code to an outcome: 2xx delivered, 5xx failed,
// anything else (4xx, or 0 for a local or connection error) deferred.
func Classify(code int) Outcome {
	switch code / 100 {
	case 2:
		return Delivered
	case 5:
		return Failed
	}
	return Deferred
}

func (o Outcome) String() string {
	switch o {
	case Delivered:
		return "delivered"
	case Deferred:
		return "deferred"
	case Failed:
		return "failed"
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

// replyResult is rcpt's Result from a server's reply.
func replyResult(rcpt string, r smtpclient.Reply, remote string) Result {
	return Result{
		Recipient: rcpt, Outcome: Classify(r.Code),
		Code: r.Code, Enhanced: r.Enhanced, Text: r.OneLine(), RemoteMTA: remote,
	}
}

// errorResults defers every recipient because of err. When err carries a
// server's reply (a refused greeting, EHLO or AUTH), its codes are kept for
// the bounce that may follow after expiry, but the outcome stays Deferred:
// the failure is the session's, not the recipient's.
func errorResults(rcpts []string, err error, remote string) []Result {
	out := make([]Result, len(rcpts))
	var re *smtpclient.ReplyError
	for i, rcpt := range rcpts {
		r := Result{Recipient: rcpt, Outcome: Deferred, Enhanced: "4.4.1", Text: err.Error(), RemoteMTA: remote}
		if errors.As(err, &re) {
			r.Code, r.Enhanced = re.Reply.Code, re.Reply.Enhanced
		}
		out[i] = r
	}
	return out
}

// localResults gives every recipient the same locally decided outcome.
func localResults(rcpts []string, outcome Outcome, enhanced, text, remote string) []Result {
	out := make([]Result, len(rcpts))
	for i, rcpt := range rcpts {
		out[i] = Result{Recipient: rcpt, Outcome: outcome, Enhanced: enhanced, Text: text, RemoteMTA: remote}
	}
	return out
}

// transaction is a message for some of its recipients, with the trace
// headers a network transport puts before its body.
type transaction struct {
	msg   Message
	rcpts []string
	// headers are prepended to the body; strip names the header removed
	// from the client's header section.
	headers []byte
	strip   string
}

// transact runs t on c. It always returns one Result per recipient. broken
// is non-nil when the session can no longer be used; retryable says the
// breakage came before the server accepted anything, so the whole
// transaction may be tried again on another session without risking a
// duplicate. reset is for a session reused from a pool.
func transact(ctx context.Context, c *smtpclient.Client, t transaction, reset bool) (results []Result, broken error, retryable bool) {
	replies, err := c.Transact(ctx, smtpclient.Transaction{
		From: t.msg.Envelope.From, Rcpts: t.rcpts, Reset: reset,
		Size: t.msg.Size + int64(len(t.headers)),
		Body: t.writeBody,
	})
	var unsupported *smtpclient.UnsupportedError
	switch {
	case errors.As(err, &unsupported):
		// The server's limits will not change on the next try.
		return localResults(t.rcpts, Failed, unsupported.Enhanced, unsupported.Text, c.Host()), nil, false
	case err != nil && replies == nil:
		return errorResults(t.rcpts, err, c.Host()), err, true
	}
	return t.results(replies, err, c.Host()), err, false
}

// writeBody writes the trace headers, then the message without the client's
// own account/label header.
func (t transaction) writeBody(w io.Writer) error {
	body, err := t.msg.Open()
	if err != nil {
		// The session is mid-DATA and cannot be recovered.
		return fmt.Errorf("open message %s: %w", t.msg.Envelope.ID, err)
	}
	defer body.Close()
	if _, err := w.Write(t.headers); err != nil {
		return err
	}
	_, err = StripHeader(w, body, t.strip)
	return err
}

// results turns the server's replies into Results. A zero reply is a
// recipient the server had accepted when the session broke during the
// body: it is deferred, as the message may not have arrived.
func (t transaction) results(replies []smtpclient.Reply, broken error, remote string) []Result {
	out := make([]Result, len(t.rcpts))
	for i, rcpt := range t.rcpts {
		if replies[i].Code == 0 {
			out[i] = Result{Recipient: rcpt, Outcome: Deferred, Enhanced: "4.4.2",
				Text: "connection lost while sending the message: " + broken.Error(), RemoteMTA: remote}
			continue
		}
		out[i] = replyResult(rcpt, replies[i], remote)
	}
	return out
}
