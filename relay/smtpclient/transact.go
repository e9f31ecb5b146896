package smtpclient

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"
	"unicode/utf8"
)

// Transaction is one message for a session.
type Transaction struct {
	From  string
	Rcpts []string
	// Size is the content's length in bytes, declared with SIZE= and held
	// against the server's limit.
	Size int64
	// Body writes the content after the server's 354; the client
	// dot-stuffs it and ends DATA. Its error breaks the session, which is
	// mid-DATA, and is returned as it is.
	Body func(w io.Writer) error
	// Reset sends RSET first, on a session that carried an earlier message.
	Reset bool
}

// UnsupportedError is a message the server cannot take, found before
// anything was sent: it exceeds the server's SIZE, or its addresses need
// SMTPUTF8, which the server does not offer. The session stays usable.
type UnsupportedError struct {
	// Enhanced is the RFC 3463 status saying which: 5.3.4 or 5.6.7.
	Enhanced string
	Text     string
}

func (e *UnsupportedError) Error() string { return e.Text }

// Transact runs t and returns, for each recipient in order, the reply that
// decided it: MAIL's when MAIL was refused, else RCPT's when RCPT was,
// else DATA's when DATA was, else the reply to the body.
//
// A nil error leaves the session usable. So does an *UnsupportedError,
// with nil replies. Any other error means the session is broken: with nil
// replies, before the server accepted anything, so t may run again on
// another session without risking a duplicate; with replies, after it
// accepted recipients, and those whose reply is the zero Reply were
// accepted when the connection broke during the body: whether the message
// reached them is unknown.
func (c *Client) Transact(ctx context.Context, t Transaction) ([]Reply, error) {
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	defer func() { c.lastUsed = time.Now() }()

	utf8Needed := !isASCII(t.From) || !allASCII(t.Rcpts)
	if err := c.check(t, utf8Needed); err != nil {
		return nil, err
	}
	replies, err := c.exchange(c.commands(t, utf8Needed))
	if err != nil {
		// Nothing is accepted before the body's final reply, so a
		// connection that broke here can be retried.
		return nil, err
	}
	if t.Reset {
		if replies[0].Code != 250 {
			return nil, &ReplyError{Cmd: "RSET", Reply: replies[0]}
		}
		replies = replies[1:]
	}
	return c.decide(t, replies)
}

// check refuses what the server said in EHLO it cannot take.
func (c *Client) check(t Transaction, utf8Needed bool) error {
	if limit, ok := c.sizeLimit(); ok && t.Size > limit {
		return &UnsupportedError{Enhanced: "5.3.4",
			Text: fmt.Sprintf("message size %d exceeds the limit of %d bytes of %s", t.Size, limit, c.host)}
	}
	if _, ok := c.ext["SMTPUTF8"]; utf8Needed && !ok {
		return &UnsupportedError{Enhanced: "5.6.7", Text: c.host + " does not support SMTPUTF8, which the addresses need"}
	}
	return nil
}

// commands are t's RSET (on a reused session), MAIL, RCPTs and DATA.
func (c *Client) commands(t Transaction, utf8Needed bool) []string {
	mail := "MAIL FROM:<" + t.From + ">"
	if _, ok := c.ext["8BITMIME"]; ok {
		// The relay accepts 8-bit bodies, so declare them to servers
		// that can take them (RFC 6152).
		mail += " BODY=8BITMIME"
	}
	if _, ok := c.ext["SIZE"]; ok {
		mail += " SIZE=" + strconv.FormatInt(t.Size, 10)
	}
	if utf8Needed {
		mail += " SMTPUTF8"
	}
	var cmds []string
	if t.Reset {
		cmds = append(cmds, "RSET")
	}
	cmds = append(cmds, mail)
	for _, r := range t.Rcpts {
		cmds = append(cmds, "RCPT TO:<"+r+">")
	}
	return append(cmds, "DATA")
}

// decide gives each recipient its reply from MAIL's, the RCPTs' and DATA's
// (replies, in that order), sending the body when DATA was taken.
func (c *Client) decide(t Transaction, replies []Reply) ([]Reply, error) {
	mailReply, rcptReplies, dataReply := replies[0], replies[1:len(replies)-1], replies[len(replies)-1]
	decided := make([]Reply, len(t.Rcpts))
	var accepted []int
	for i := range t.Rcpts {
		switch {
		case mailReply.Code/100 != 2:
			decided[i] = mailReply
		default:
			decided[i] = rcptReplies[i]
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
				return decided, err
			}
		}
		return decided, nil
	}
	final := dataReply
	var err error
	if dataReply.Code == 354 {
		// A failure leaves final the zero Reply: nobody knows whether the
		// accepted recipients got the message.
		final, err = c.sendBody(t)
	}
	for _, i := range accepted {
		decided[i] = final
	}
	return decided, err
}

// exchange sends cmds (an optional RSET, MAIL, RCPTs, DATA) and returns
// one reply per command. When the server offers PIPELINING every command
// goes in one write (RFC 2920 allows DATA last in a group); otherwise each
// waits for its reply, and the exchange stops early at a refused RSET or
// MAIL, whose reply then stands for the commands not sent, or before DATA
// when no RCPT was accepted.
func (c *Client) exchange(cmds []string) ([]Reply, error) {
	if _, ok := c.ext["PIPELINING"]; ok {
		return c.pipeline(cmds)
	}
	replies := make([]Reply, 0, len(cmds))
	mailIdx, dataIdx := 0, len(cmds)-1
	if cmds[0] == "RSET" {
		mailIdx = 1
	}
	anyRcpt := false
	for i, cmd := range cmds {
		if i == dataIdx && !anyRcpt {
			return append(replies, Reply{Code: 503, Enhanced: "5.5.1", Text: "DATA not sent: no recipient accepted"}), nil
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

// pipeline sends every command in one write, then reads their replies.
func (c *Client) pipeline(cmds []string) ([]Reply, error) {
	for _, cmd := range cmds {
		if err := c.send(cmd); err != nil {
			return nil, err
		}
	}
	if err := c.flush(); err != nil {
		return nil, fmt.Errorf("send commands: %w", err)
	}
	replies := make([]Reply, 0, len(cmds))
	for range cmds {
		r, err := c.readReplyTimeout()
		if err != nil {
			return nil, err
		}
		replies = append(replies, r)
	}
	return replies, nil
}

// sendBody streams the content after a 354 and returns the final reply.
func (c *Client) sendBody(t Transaction) (Reply, error) {
	dw := c.dotWriter()
	if err := t.Body(dw); err != nil {
		return Reply{}, err
	}
	if err := dw.Close(); err != nil {
		return Reply{}, err
	}
	// The final reply may take long: the server may scan or store 16 MB.
	if err := c.conn.SetReadDeadline(time.Now().Add(c.dataTimeout + c.cmdTimeout)); err != nil {
		return Reply{}, err
	}
	return readReply(c.br)
}

func (c *Client) sizeLimit() (int64, bool) {
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
