// Package dsn builds delivery status notifications (RFC 3464): the bounce
// a sender gets when mail to some recipients failed, or a warning that it
// is delayed.
package dsn

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime/quotedprintable"
	"strings"
	"time"

	"github.com/mailfleet/mailfleet/relay/delivery"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// ErrNullSender is returned for a message from the null sender "<>": a
// notification about a notification could loop forever (RFC 5321 §4.5.5),
// so none is ever built.
var ErrNullSender = errors.New("no delivery status notification to the null sender")

// Action is a recipient's Action field (RFC 3464 §2.3.3); only the two a
// relay reports are defined.
type Action string

const (
	// Failed: the message could not be delivered and will not be retried.
	Failed Action = "failed"
	// Delayed: delivery is still being retried.
	Delayed Action = "delayed"
)

// Recipient is one recipient's per-recipient fields.
type Recipient struct {
	// Address is the envelope recipient (Final-Recipient: rfc822;Address).
	Address string
	Action  Action
	// Status is the RFC 3463 code ("5.1.1"); its class must fit Action:
	// 5 for failed, 4 for delayed.
	Status string
	// RemoteMTA is the server that answered, if any (Remote-MTA: dns;...).
	RemoteMTA string
	// Code and Text are the server's reply (Diagnostic-Code: smtp; Code
	// Status Text). With Code 0 the failure was local and Text explains it
	// (Diagnostic-Code: X-Mailfleet; Text).
	Code int
	Text string
	// LastAttempt is when delivery was last tried (optional).
	LastAttempt time.Time
}

// FromResult turns a transport's Result into a Recipient, with Action
// failed for Failed and delayed otherwise. A Result lacking an enhanced
// code of the right class gets the class's generic one (5.0.0, 4.0.0).
func FromResult(r delivery.Result, at time.Time) Recipient {
	action, class := Delayed, "4"
	if r.Outcome == delivery.Failed {
		action, class = Failed, "5"
	}
	status := r.Enhanced
	if !strings.HasPrefix(status, class+".") || !validStatus(status) {
		status = class + ".0.0"
	}
	return Recipient{
		Address: r.Recipient, Action: action, Status: status,
		RemoteMTA: r.RemoteMTA, Code: r.Code, Text: r.Text, LastAttempt: at,
	}
}

// Report is what a notification is about.
type Report struct {
	// ReportingMTA is this relay's host name; the notification comes from
	// MAILER-DAEMON@ReportingMTA.
	ReportingMTA string
	// QueueID names the original message in the relay (X-Mailfleet-Queue-ID).
	QueueID string
	// Sender is the original envelope sender, who gets the notification.
	Sender string
	// ArrivalDate is when the relay accepted the original message.
	ArrivalDate time.Time
	// Recipients are the recipients reported on, at least one.
	Recipients []Recipient
	// Headers is the original message's header section (see
	// HeaderSection), returned as text/rfc822-headers.
	Headers []byte
}

// Notification is a built notification: its envelope and its bytes.
type Notification struct {
	// From is the envelope sender: always the null sender "", so that it
	// can itself never be bounced.
	From string
	// To is the original sender.
	To string
	// Body is the whole message, header and body, CRLF line ends.
	Body []byte
}

// maxHeaderSection bounds how much of the original header is returned:
// enough for any real header, not a 16 MB message without a blank line.
const maxHeaderSection = 256 << 10

// HeaderSection reads the header section of a message (up to, not
// including, the empty line), at most maxHeaderSection bytes of whole
// lines.
func HeaderSection(r io.Reader) ([]byte, error) {
	br := bufio.NewReader(r)
	var out bytes.Buffer
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than bufio's buffer: keep reading it whole.
			buf := append([]byte(nil), line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = br.ReadSlice('\n')
				buf = append(buf, line...)
				if len(buf) > maxHeaderSection {
					return out.Bytes(), nil
				}
			}
			line = buf
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return out.Bytes(), nil
		}
		if out.Len()+len(line) > maxHeaderSection {
			return out.Bytes(), nil
		}
		out.Write(line)
		if !bytes.HasSuffix(line, []byte("\n")) {
			out.WriteString("\r\n")
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out.Bytes(), nil
			}
			return nil, fmt.Errorf("read original header: %w", err)
		}
	}
}

// Build renders the notification for r at now: a multipart/report with a
// text/plain explanation, the message/delivery-status part and the original
// header as text/rfc822-headers. It returns ErrNullSender when the original
// sender is "<>".
func Build(r Report, now time.Time) (Notification, error) {
	sender := strings.TrimSpace(strings.Trim(strings.TrimSpace(r.Sender), "<>"))
	if sender == "" {
		return Notification{}, ErrNullSender
	}
	if len(r.Recipients) == 0 {
		return Notification{}, errors.New("delivery status notification without recipients")
	}
	if r.ReportingMTA == "" {
		return Notification{}, errors.New("delivery status notification without a reporting MTA")
	}
	for _, rc := range r.Recipients {
		if rc.Action != Failed && rc.Action != Delayed {
			return Notification{}, fmt.Errorf("recipient %s: unknown action %q", rc.Address, rc.Action)
		}
		if !validStatus(rc.Status) {
			return Notification{}, fmt.Errorf("recipient %s: status %q is not an RFC 3463 code", rc.Address, rc.Status)
		}
	}
	boundary, err := newBoundary()
	if err != nil {
		return Notification{}, err
	}
	failed := false
	for _, rc := range r.Recipients {
		if rc.Action == Failed {
			failed = true
		}
	}
	mta := clean(r.ReportingMTA)
	subject := "Delayed Mail (still being retried)"
	if failed {
		subject = "Undelivered Mail Returned to Sender"
	}
	var b bytes.Buffer
	hdr := func(name, value string) { b.WriteString(name + ": " + value + "\r\n") }
	hdr("From", "Mail Delivery System <MAILER-DAEMON@"+mta+">")
	hdr("To", "<"+clean(sender)+">")
	hdr("Subject", subject)
	hdr("Date", now.Format(time.RFC1123Z))
	hdr("Message-ID", "<"+boundary[:24]+"@"+mta+">")
	// RFC 3834: automatic responders must not answer this.
	hdr("Auto-Submitted", "auto-replied")
	if r.QueueID != "" {
		hdr("X-Mailfleet-Queue-ID", clean(r.QueueID))
	}
	hdr("MIME-Version", "1.0")
	hdr("Content-Type", `multipart/report; report-type=delivery-status;`+"\r\n\t"+`boundary="`+boundary+`"`)
	b.WriteString("\r\nThis is a MIME-encapsulated delivery status notification.\r\n")

	part := func(contentType string, extra ...string) {
		b.WriteString("\r\n--" + boundary + "\r\n")
		b.WriteString("Content-Type: " + contentType + "\r\n")
		for _, e := range extra {
			b.WriteString(e + "\r\n")
		}
		b.WriteString("\r\n")
	}

	part(`text/plain; charset="utf-8"`, "Content-Description: Notification", "Content-Transfer-Encoding: quoted-printable")
	qp := quotedprintable.NewWriter(&b)
	qp.Write([]byte(humanText(r, failed, mta)))
	qp.Close()

	part("message/delivery-status", "Content-Description: Delivery report")
	b.WriteString("Reporting-MTA: dns; " + mta + "\r\n")
	if r.QueueID != "" {
		b.WriteString("X-Mailfleet-Queue-ID: " + clean(r.QueueID) + "\r\n")
	}
	if !r.ArrivalDate.IsZero() {
		b.WriteString("Arrival-Date: " + r.ArrivalDate.Format(time.RFC1123Z) + "\r\n")
	}
	for _, rc := range r.Recipients {
		b.WriteString("\r\n")
		b.WriteString("Final-Recipient: rfc822; " + clean(rc.Address) + "\r\n")
		b.WriteString("Action: " + string(rc.Action) + "\r\n")
		b.WriteString("Status: " + rc.Status + "\r\n")
		if rc.RemoteMTA != "" {
			b.WriteString("Remote-MTA: dns; " + clean(rc.RemoteMTA) + "\r\n")
		}
		b.WriteString("Diagnostic-Code: " + diagnostic(rc) + "\r\n")
		if !rc.LastAttempt.IsZero() {
			b.WriteString("Last-Attempt-Date: " + rc.LastAttempt.Format(time.RFC1123Z) + "\r\n")
		}
	}

	part("text/rfc822-headers", "Content-Description: Undelivered Message Headers")
	b.Write(crlf(r.Headers))
	b.WriteString("\r\n--" + boundary + "--\r\n")
	return Notification{From: "", To: sender, Body: b.Bytes()}, nil
}

// humanText is the first part, for a person.
func humanText(r Report, failed bool, mta string) string {
	var t strings.Builder
	fmt.Fprintf(&t, "This is the mail system at host %s.\r\n\r\n", mta)
	if failed {
		t.WriteString("Your message could not be delivered to one or more recipients.\r\n" +
			"It is attached below (headers only).\r\n")
	} else {
		t.WriteString("Your message could not be delivered yet to one or more recipients.\r\n" +
			"The mail system will keep trying; you do not need to send it again.\r\n")
	}
	t.WriteString("\r\n")
	for _, rc := range r.Recipients {
		fmt.Fprintf(&t, "<%s>: %s\r\n", clean(rc.Address), clean(rc.Text))
	}
	return t.String()
}

// diagnostic is the Diagnostic-Code value: an SMTP reply, or the local
// reason under our own diagnostic type. The reply's enhanced code is only
// known through Status, so it is shown when Status has the reply's class
// (after expiry Status is 5.4.7 while the last reply was a 4xx).
func diagnostic(rc Recipient) string {
	if rc.Code >= 200 && rc.Code <= 599 {
		if strings.HasPrefix(rc.Status, fmt.Sprint(rc.Code/100)+".") {
			return fmt.Sprintf("smtp; %d %s %s", rc.Code, rc.Status, clean(rc.Text))
		}
		return fmt.Sprintf("smtp; %d %s", rc.Code, clean(rc.Text))
	}
	return "X-Mailfleet; " + clean(rc.Text)
}

// validStatus checks an RFC 3463 code: class 2, 4 or 5, then two numbers of
// up to three digits.
func validStatus(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || (parts[0] != "2" && parts[0] != "4" && parts[0] != "5") {
		return false
	}
	for _, p := range parts[1:] {
		if p == "" || len(p) > 3 || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

// clean makes s safe inside one header line: no control characters, so a
// remote server's reply text cannot add fields or parts.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\t' {
			return ' '
		}
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

// crlf makes every line end in CRLF and the text end with one.
func crlf(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	s := strings.ReplaceAll(string(b), "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	s = strings.ReplaceAll(s, "\n", "\r\n")
	if !strings.HasSuffix(s, "\r\n") {
		s += "\r\n"
	}
	return []byte(s)
}

func newBoundary() (string, error) {
	var buf [24]byte
	if _, err := rand.Read(buf[:]); err != nil {
		return "", fmt.Errorf("make MIME boundary: %w", err)
	}
	return hex.EncodeToString(buf[:]), nil
}

// Builder returns the function the dispatcher calls to bounce a message
// (dispatch.BuildDSN): it reads the original header from body and renders
// a notification, Action failed, for the failed results, reported by
// reportingMTA (the relay's host name).
func Builder(reportingMTA string) func(orig spool.Envelope, failed []delivery.Result, body io.Reader, now time.Time) ([]byte, error) {
	return func(orig spool.Envelope, failed []delivery.Result, body io.Reader, now time.Time) ([]byte, error) {
		headers, err := HeaderSection(body)
		if err != nil {
			return nil, fmt.Errorf("bounce message %s: %w", orig.ID, err)
		}
		r := Report{
			ReportingMTA: reportingMTA, QueueID: orig.ID, Sender: orig.From,
			ArrivalDate: orig.ReceivedAt, Headers: headers,
		}
		for _, f := range failed {
			rc := FromResult(f, now)
			// The dispatcher only bounces what will not be retried.
			if rc.Action != Failed {
				rc.Action, rc.Status = Failed, "5"+rc.Status[1:]
			}
			r.Recipients = append(r.Recipients, rc)
		}
		n, err := Build(r, now)
		if err != nil {
			return nil, fmt.Errorf("bounce message %s: %w", orig.ID, err)
		}
		return n.Body, nil
	}
}
