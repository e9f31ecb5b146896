package delivery

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
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
func replyResult(rcpt string, r reply, remote string) Result {
	return Result{
		Recipient: rcpt, Outcome: Classify(r.Code),
		Code: r.Code, Enhanced: r.Enhanced, Text: textOneLine(r), RemoteMTA: remote,
	}
}

// errorResults defers every recipient because of err. When err carries a
// server's reply (a refused greeting, EHLO or AUTH), its codes are kept for
// the bounce that may follow after expiry, but the outcome stays Deferred:
// the failure is the session's, not the recipient's.
func errorResults(rcpts []string, err error, remote string) []Result {
	out := make([]Result, len(rcpts))
	var re *replyError
	for i, rcpt := range rcpts {
		r := Result{Recipient: rcpt, Outcome: Deferred, Enhanced: "4.4.1", Text: err.Error(), RemoteMTA: remote}
		if errors.As(err, &re) {
			r.Code, r.Enhanced = re.reply.Code, re.reply.Enhanced
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

// transaction is one MAIL..DATA exchange on a session.
type transaction struct {
	msg   Message
	rcpts []string
	// headers are prepended to the body; strip names the header removed
	// from the client's header section.
	headers []byte
	strip   string
	// reset sends RSET first, on a connection reused from the pool.
	reset bool
}

// transact runs t on c. It always returns one Result per recipient. broken
// is non-nil when the connection can no longer be used; retryable says the
// breakage came before the server accepted anything, so the whole
// transaction may be tried again on another connection without risking a
// duplicate.
func (c *client) transact(ctx context.Context, t transaction) (results []Result, broken error, retryable bool) {
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	defer func() { c.lastUsed = time.Now() }()

	env := t.msg.Envelope
	size := t.msg.Size + int64(len(t.headers))
	if limit, ok := c.sizeLimit(); ok && size > limit {
		return localResults(t.rcpts, Failed, "5.3.4",
			fmt.Sprintf("message size %d exceeds the limit of %d bytes of %s", size, limit, c.host), c.host), nil, false
	}
	_, utf8OK := c.ext["SMTPUTF8"]
	needUTF8 := !isASCII(env.From) || !allASCII(t.rcpts)
	if needUTF8 && !utf8OK {
		return localResults(t.rcpts, Failed, "5.6.7",
			c.host+" does not support SMTPUTF8, which the addresses need", c.host), nil, false
	}

	mail := "MAIL FROM:<" + env.From + ">"
	if _, ok := c.ext["8BITMIME"]; ok {
		// The relay accepts 8-bit bodies, so declare them to servers
		// that can take them (RFC 6152).
		mail += " BODY=8BITMIME"
	}
	if _, ok := c.ext["SIZE"]; ok {
		mail += " SIZE=" + strconv.FormatInt(size, 10)
	}
	if needUTF8 {
		mail += " SMTPUTF8"
	}
	var cmds []string
	if t.reset {
		cmds = append(cmds, "RSET")
	}
	cmds = append(cmds, mail)
	for _, r := range t.rcpts {
		cmds = append(cmds, "RCPT TO:<"+r+">")
	}
	cmds = append(cmds, "DATA")

	replies, err := c.exchange(cmds)
	if err != nil {
		// Nothing is accepted before the body's final reply, so a
		// connection that broke here can be retried.
		return errorResults(t.rcpts, err, c.host), err, true
	}
	if t.reset {
		if replies[0].Code != 250 {
			err := &replyError{cmd: "RSET", reply: replies[0]}
			return errorResults(t.rcpts, err, c.host), err, true
		}
		replies = replies[1:]
	}
	mailReply, rcptReplies, dataReply := replies[0], replies[1:len(replies)-1], replies[len(replies)-1]
	results = make([]Result, len(t.rcpts))
	var accepted []int
	for i, rcpt := range t.rcpts {
		switch {
		case mailReply.Code/100 != 2:
			results[i] = replyResult(rcpt, mailReply, c.host)
		default:
			results[i] = replyResult(rcpt, rcptReplies[i], c.host)
			if rcptReplies[i].Code/100 == 2 {
				accepted = append(accepted, i)
			}
		}
	}
	if len(accepted) == 0 {
		if dataReply.Code == 354 {
			// A pipelining server that took DATA with nobody to deliver
			// to: end it empty so the session stays in step.
			if _, err := c.cmd("."); err != nil {
				return results, err, false
			}
		}
		return results, nil, false
	}
	if dataReply.Code != 354 {
		for _, i := range accepted {
			results[i] = replyResult(t.rcpts[i], dataReply, c.host)
		}
		return results, nil, false
	}
	final, err := c.sendBody(t)
	if err != nil {
		for _, i := range accepted {
			results[i] = Result{Recipient: t.rcpts[i], Outcome: Deferred, Enhanced: "4.4.2",
				Text: "connection lost while sending the message: " + err.Error(), RemoteMTA: c.host}
		}
		return results, err, false
	}
	for _, i := range accepted {
		results[i] = replyResult(t.rcpts[i], final, c.host)
	}
	return results, nil, false
}

// exchange sends cmds (an optional RSET, MAIL, RCPTs, DATA) and returns
// one reply per command. When the server offers PIPELINING every command
// goes in one write (RFC 2920 allows DATA last in a group); otherwise each
// waits for its reply, and the exchange stops early at a refused RSET or
// MAIL, whose reply then stands for the commands not sent, or before DATA
// when no RCPT was accepted.
func (c *client) exchange(cmds []string) ([]reply, error) {
	replies := make([]reply, 0, len(cmds))
	if _, ok := c.ext["PIPELINING"]; ok {
		for _, cmd := range cmds {
			if err := c.send(cmd); err != nil {
				return nil, err
			}
		}
		if err := c.flush(); err != nil {
			return nil, fmt.Errorf("send commands: %w", err)
		}
		for range cmds {
			r, err := c.readReplyTimeout()
			if err != nil {
				return nil, err
			}
			replies = append(replies, r)
		}
		return replies, nil
	}
	mailIdx, dataIdx := 0, len(cmds)-1
	if cmds[0] == "RSET" {
		mailIdx = 1
	}
	anyRcpt := false
	for i, cmd := range cmds {
		if i == dataIdx && !anyRcpt {
			return append(replies, reply{Code: 503, Enhanced: "5.5.1", Text: "DATA not sent: no recipient accepted"}), nil
		}
		r, err := c.cmd(cmd)
		if err != nil {
			return nil, err
		}
		replies = append(replies, r)
		if i <= mailIdx && r.Code/100 != 2 {
			for len(replies) < len(cmds) {
				replies = append(replies, r)
			}
			return replies, nil
		}
		if i > mailIdx && i < dataIdx && r.Code/100 == 2 {
			anyRcpt = true
		}
	}
	return replies, nil
}

// sendBody streams the trace headers and the body after a 354 and returns
// the final reply.
func (c *client) sendBody(t transaction) (reply, error) {
	body, err := t.msg.Open()
	if err != nil {
		// The connection is mid-DATA and cannot be recovered.
		return reply{}, fmt.Errorf("open message %s: %w", t.msg.Envelope.ID, err)
	}
	defer body.Close()
	dw := c.dotWriter()
	if _, err := dw.Write(t.headers); err != nil {
		return reply{}, err
	}
	if _, err := StripHeader(dw, body, t.strip); err != nil {
		return reply{}, err
	}
	if err := dw.Close(); err != nil {
		return reply{}, err
	}
	// The final reply may take long: the server may scan or store 16 MB.
	if err := c.conn.SetReadDeadline(time.Now().Add(c.dataTimeout + c.cmdTimeout)); err != nil {
		return reply{}, err
	}
	return readReply(c.br)
}

func (c *client) sizeLimit() (int64, bool) {
	v, ok := c.ext["SIZE"]
	if !ok || v == "" {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func allASCII(ss []string) bool {
	for _, s := range ss {
		if !isASCII(s) {
			return false
		}
	}
	return true
}
