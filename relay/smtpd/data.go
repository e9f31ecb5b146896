package smtpd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

var crlf = []byte("\r\n")

// dataReader reads a DATA body from the session's reader up to the
// end-of-data line, and hands it to the Backend as an io.Reader.
//
// Only <CRLF>.<CRLF> ends the body: a "." line counts as the end only when
// the line before it ended with a real CRLF, so `\n.\n`, `\r.\r` and
// `\n.\r\n` never split one submission into two (SMTP smuggling). Lines
// that end in a bare LF, and bare CRs inside a line, come out as CRLF line
// ends, as Postfix's `normalize` mode stores them: every hop after us then
// agrees on where lines end. Leading dots are unstuffed (RFC 5321 §4.5.2).
//
// The limits are enforced while reading: past maxSize bytes, or at a line
// over maxLine, nothing more comes out and the body is discarded up to its
// end; only then does Read return the refusal, so the session is in step
// with the client whatever is refused.
type dataReader struct {
	br       *bufio.Reader
	maxSize  int64
	maxLine  int
	prevCRLF bool   // the line before ended with a real CRLF
	size     int64  // bytes handed out
	pending  []byte // of the current line, not yet handed out
	scratch  []byte // for lines rewritten while normalising
	refusal  *Error // the first limit crossed; the rest is discarded
	readErr  error  // the connection failed before the end of data
	err      error  // io.EOF, the refusal or readErr, once the body is over
}

func newDataReader(br *bufio.Reader, maxSize int64, maxLine int) *dataReader {
	// The DATA command line ended with CRLF.
	return &dataReader{br: br, maxSize: maxSize, maxLine: maxLine, prevCRLF: true}
}

// Read hands out the body a line at a time, as the old writer-based loop
// wrote it: a clean line straight from the read buffer.
func (d *dataReader) Read(p []byte) (int, error) {
	for len(d.pending) == 0 && d.err == nil {
		d.next()
	}
	if len(d.pending) > 0 {
		n := copy(p, d.pending)
		d.pending = d.pending[n:]
		return n, nil
	}
	return 0, d.err
}

// handedOutWhole reports whether the whole body, to its end and within the
// limits, was handed out.
func (d *dataReader) handedOutWhole() bool {
	return d.err == io.EOF && len(d.pending) == 0
}

// refusalOr is the limit the body crossed, or e when it crossed none.
func (d *dataReader) refusalOr(e *Error) *Error {
	if d.refusal != nil {
		return d.refusal
	}
	return e
}

// finish discards what the Backend left unread, and returns the read error
// if the connection failed before the end of data.
func (d *dataReader) finish() error {
	for d.err == nil {
		d.pending = nil
		d.next()
	}
	return d.readErr
}

// next reads one line into pending, or ends the body.
func (d *dataReader) next() {
	line, err := d.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		// A line longer than the read buffer is over any sane line limit.
		d.refuse(d.lineTooLong())
		if d.prevCRLF, err = skipLine(d.br, line[len(line)-1] == '\r'); err != nil {
			d.readFailed(err)
		}
		return
	}
	if err != nil {
		d.readFailed(err)
		return
	}
	if d.prevCRLF && len(line) == 3 && line[0] == '.' && line[1] == '\r' {
		d.err = io.EOF
		if d.refusal != nil {
			d.err = d.refusal
		}
		return
	}
	d.take(line)
}

// take unstuffs and normalises one line and hands it out, unless a limit
// was crossed.
func (d *dataReader) take(line []byte) {
	content, realCRLF := trimEOL(line)
	d.prevCRLF = realCRLF
	if len(content) > 0 && content[0] == '.' {
		content = content[1:]
	}
	if len(content) > d.maxLine {
		d.refuse(d.lineTooLong())
	}
	if d.refusal != nil {
		return
	}
	if bytes.IndexByte(content, '\r') < 0 && realCRLF && len(line) == len(content)+2 {
		d.pending = line // the common case: nothing to rewrite
	} else {
		d.scratch = normalise(d.scratch[:0], content)
		d.pending = d.scratch
	}
	d.size += int64(len(d.pending))
	if d.size > d.maxSize {
		d.pending = nil
		d.refuse(&Error{Reply: ReplyTooBig, Err: ErrMessageTooBig})
	}
}

func (d *dataReader) lineTooLong() *Error {
	return &Error{Reply: ReplyDataLineLong.With(d.maxLine), Err: ErrMessageLineTooLong}
}

// refuse keeps the first limit crossed: its reply is the one sent.
func (d *dataReader) refuse(e *Error) {
	if d.refusal == nil {
		d.refusal = e
	}
}

// readFailed ends the body on a connection error. A connection closed
// mid-body is io.ErrUnexpectedEOF: io.EOF would tell the Backend that the
// body was complete.
func (d *dataReader) readFailed(err error) {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	d.readErr = fmt.Errorf("read message body: %w", err)
	d.err = d.readErr
}

// trimEOL splits off the line end: CRLF, or a bare LF.
func trimEOL(line []byte) (content []byte, realCRLF bool) {
	n := len(line) - 1 // line ends with '\n'
	if n > 0 && line[n-1] == '\r' {
		return line[:n-1], true
	}
	return line[:n], false
}

// normalise appends content to dst with a CRLF, turning bare CRs inside it
// into line ends.
func normalise(dst, content []byte) []byte {
	for piece := range bytes.SplitSeq(content, []byte{'\r'}) {
		dst = append(dst, piece...)
		dst = append(dst, crlf...)
	}
	return dst
}

// skipLine discards the rest of an over-long line, including its LF, and
// reports whether the line ended with a real CRLF; lastCR says whether the
// part already read ended with a CR.
func skipLine(br *bufio.Reader, lastCR bool) (realCRLF bool, err error) {
	for {
		chunk, err := br.ReadSlice('\n')
		if !errors.Is(err, bufio.ErrBufferFull) {
			n := len(chunk)
			return n >= 2 && chunk[n-2] == '\r' || n == 1 && lastCR, err
		}
		lastCR = chunk[len(chunk)-1] == '\r'
	}
}
