package delivery

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/mailfleet/mailfleet/relay/spool"
)

// DefaultLabelHeader names the header that tells downstream systems which
// account and label sent a message.
const DefaultLabelHeader = "X-Mailfleet-Label"

// stripBufferSize is the read buffer of StripHeader. Header lines longer than
// this are handled in pieces, so it bounds memory, not line length.
const stripBufferSize = 32 << 10

// StripHeader copies a message from src to dst, leaving out every field of
// the header section named name (compared case-insensitively), with its
// folded continuation lines. The header section ends at the first empty line
// or at the first line that is neither a field nor a continuation; from there
// on bytes are copied untouched, so the body is never altered. It streams:
// only one buffer of stripBufferSize bytes is held, whatever the message size.
// It returns the number of bytes written.
func StripHeader(dst io.Writer, src io.Reader, name string) (int64, error) {
	return stripHeader(dst, src, name, stripBufferSize)
}

// stripHeader is StripHeader with a chosen buffer size, so tests can make
// lines longer than the buffer without megabytes of input.
func stripHeader(dst io.Writer, src io.Reader, name string, bufSize int) (int64, error) {
	if bufSize < len(name)+2 {
		return 0, fmt.Errorf("strip header %s: buffer of %d bytes is too small", name, bufSize)
	}
	br := bufio.NewReaderSize(src, bufSize)
	cw := &countingWriter{w: dst}
	if err := stripHeaderSection(cw, br, []byte(name)); err != nil {
		return cw.n, err
	}
	if _, err := br.WriteTo(cw); err != nil {
		return cw.n, err
	}
	return cw.n, nil
}

// stripHeaderSection consumes the header section from br, writing what is
// kept, and leaves br at the start of the body (the empty line included in
// what was written).
func stripHeaderSection(w io.Writer, br *bufio.Reader, name []byte) error {
	// dropping is true while the current field is one being removed;
	// midLine is true when the previous piece was not a whole line, so the
	// next piece continues it rather than starting a new line; open is true
	// while a line longer than the buffer has not shown yet whether it is a
	// field (its colon may come in a later piece).
	var dropping, midLine, open bool
	var scan fieldScan
	for {
		line, err := br.ReadSlice('\n')
		if len(line) == 0 && err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		full := errors.Is(err, bufio.ErrBufferFull)
		switch {
		case !midLine && isEmptyLine(line, err):
			// The end of the header section: the rest is body.
			_, werr := w.Write(line)
			return werr
		case !midLine && (line[0] == ' ' || line[0] == '\t'):
			// A continuation keeps the fate of the field it folds.
		case !midLine:
			scan = fieldScan{}
			decided, field := scan.feed(line)
			if !full {
				// The whole line is here (or all there is of it before
				// EOF): no colon by its end means no field.
				decided = true
			}
			switch {
			case decided && !field:
				// Not a header line: the header section is over and this
				// line already belongs to the body.
				_, werr := w.Write(line)
				return werr
			case decided:
				dropping, open = fieldNamed(line, name), false
			default:
				// Only name characters and white space so far. A long
				// run of them after the stripped name is taken for that
				// field, so padding cannot smuggle one through.
				dropping, open = scan.nameIs(name), true
			}
		case open:
			decided, field := scan.feed(line)
			if !full {
				decided = true
			}
			if decided && !field && !dropping {
				_, werr := w.Write(line)
				return werr
			}
			open = !decided
		}
		midLine = full
		if !dropping {
			if _, werr := w.Write(line); werr != nil {
				return werr
			}
		}
		if err != nil && !full {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// fieldScan decides, piece by piece, whether a line starts a header field:
// a field name, optional white space (obsolete syntax, RFC 5322 §4.5.3),
// then a colon.
type fieldScan struct {
	name    []byte // the name characters seen, at most 256 kept
	nameLen int
	inSpace bool
}

// feed scans the next piece of the line; decided is false while only name
// characters and white space were seen.
func (f *fieldScan) feed(piece []byte) (decided, field bool) {
	for _, c := range piece {
		switch {
		case c == ':':
			return true, f.nameLen > 0
		case c == ' ' || c == '\t':
			if f.nameLen == 0 {
				return true, false
			}
			f.inSpace = true
		case c > ' ' && c < 0x7f && !f.inSpace:
			if len(f.name) < 256 {
				f.name = append(f.name, c)
			}
			f.nameLen++
		default:
			return true, false
		}
	}
	return false, false
}

// nameIs reports whether the name seen so far is name.
func (f *fieldScan) nameIs(name []byte) bool {
	return f.nameLen == len(name) && bytes.EqualFold(f.name, name)
}

// isEmptyLine reports whether line (a whole line, or the last bytes before
// EOF) is empty: "\r\n" or "\n".
func isEmptyLine(line []byte, err error) bool {
	if errors.Is(err, bufio.ErrBufferFull) {
		return false
	}
	return string(line) == "\r\n" || string(line) == "\n"
}

// isField reports whether line starts with a field name (printable ASCII
// other than ':' and space, RFC 5322 §3.6.8) followed by a colon, allowing
// white space before the colon (obsolete syntax, RFC 5322 §4.5.3).
func isField(line []byte) bool {
	var f fieldScan
	_, field := f.feed(line)
	return field
}

// fieldNamed reports whether the field starting line is called name. Some
// writers put white space before the colon (obsolete syntax, RFC 5322 §4.5.3);
// receivers read "Name :" as "Name", so it is stripped too.
func fieldNamed(line, name []byte) bool {
	colon := bytes.IndexByte(line, ':')
	return colon >= 0 && bytes.EqualFold(bytes.TrimRight(line[:colon], " \t"), name)
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Trace describes the hop a network transport records in the headers it
// prepends.
type Trace struct {
	// Hostname is this relay's name: the "by" of the Received header.
	Hostname string
	// LabelHeader names the account/label header; empty means
	// DefaultLabelHeader.
	LabelHeader string
}

// headerName returns the account/label header's name.
func (t Trace) headerName() string {
	if t.LabelHeader == "" {
		return DefaultLabelHeader
	}
	return t.LabelHeader
}

// Headers renders the trace headers for env sent to rcpts: a Received
// header (RFC 5321 §4.4) and the account/label header. The Received header
// names the recipient only when there is exactly one, as RFC 5321 advises
// against disclosing the others.
//
//	Received: from helo ([ip])
//		(using TLSv1.3)
//		by hostname (mailfleet) with ESMTPSA id queue-id
//		for <rcpt>; date
//	X-Mailfleet-Label: account=acme; label=1001
func (t Trace) Headers(env spool.Envelope, rcpts []string) []byte {
	var b bytes.Buffer
	b.WriteString("Received: from ")
	b.WriteString(fromClause(env))
	if env.TLSVersion != "" {
		b.WriteString("\r\n\t(using ")
		b.WriteString(sanitizeToken(env.TLSVersion, "TLS"))
		b.WriteString(")")
	}
	b.WriteString("\r\n\tby ")
	b.WriteString(sanitizeToken(t.Hostname, "localhost"))
	b.WriteString(" (mailfleet) with ")
	b.WriteString(protocol(env))
	if env.ID != "" {
		b.WriteString(" id ")
		b.WriteString(sanitizeToken(env.ID, "unknown"))
	}
	if len(rcpts) == 1 {
		b.WriteString("\r\n\tfor <")
		b.WriteString(headerValue(rcpts[0]))
		b.WriteString(">")
	}
	received := env.ReceivedAt
	if received.IsZero() {
		received = time.Now()
	}
	b.WriteString(";\r\n\t")
	b.WriteString(received.Format(time.RFC1123Z))
	b.WriteString("\r\n")
	b.WriteString(t.headerName())
	b.WriteString(": ")
	b.WriteString(LabelValue(env))
	b.WriteString("\r\n")
	// The DKIM signatures made at submission: after the trace fields,
	// which they do not sign, as a signer's fields stay above the message.
	b.WriteString(env.Prepend)
	return b.Bytes()
}

// LabelValue is the account/label header's value: "account=<api_user>" and,
// when the message has a label, "; label=<label_id>".
func LabelValue(env spool.Envelope) string {
	v := "account=" + headerValue(env.APIUser)
	if env.LabelID != "" {
		v += "; label=" + headerValue(env.LabelID)
	}
	return v
}

// fromClause renders "helo ([ip])", or "[ip]" alone when the client sent no
// usable HELO name.
func fromClause(env spool.Envelope) string {
	ip := env.RemoteAddr
	if host, _, err := net.SplitHostPort(ip); err == nil {
		ip = host
	}
	literal := "[unknown]"
	if addr := net.ParseIP(ip); addr != nil {
		if addr.To4() == nil {
			literal = "[IPv6:" + addr.String() + "]"
		} else {
			literal = "[" + addr.String() + "]"
		}
	}
	helo := sanitizeToken(env.Helo, "")
	if helo == "" {
		return literal
	}
	return helo + " (" + literal + ")"
}

// protocol is the "with" keyword of RFC 3848: every message a relay client
// submits was authenticated (ESMTPA), and ESMTPSA when TLS carried it. A
// message from the HTTP send API came in by HTTPS (the API serves nothing
// else), which RFC 3848 has no word for: "HTTPS", as other services that
// take mail over HTTP write it.
func protocol(env spool.Envelope) string {
	if env.Via == spool.ViaHTTP {
		return "HTTPS"
	}
	p := "ESMTP"
	if env.TLS {
		p += "S"
	}
	if env.APIUser != "" {
		p += "A"
	}
	return p
}

// sanitizeToken keeps a client-chosen word (a HELO name, a queue id) from
// breaking the header's syntax: anything but letters, digits and
// ".-_:[]@#" becomes '?', and an empty result becomes fallback.
func sanitizeToken(s, fallback string) string {
	if len(s) > 255 {
		s = s[:255]
	}
	s = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		case strings.ContainsRune(".-_:[]@#", r):
			return r
		}
		return '?'
	}, s)
	if s == "" {
		return fallback
	}
	return s
}
