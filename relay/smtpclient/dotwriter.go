package smtpclient

import (
	"bufio"
	"bytes"
	"io"
)

// dotWriter dot-stuffs a message body for DATA and turns a bare LF into
// CRLF; Close ends the data with ".\r\n". It writes exactly what
// net/textproto's DotWriter writes, but copies the runs between line ends
// whole: textproto's goes byte by byte, which was a fifth of the CPU time
// of delivering 100 KB messages.
type dotWriter struct {
	w     *bufio.Writer
	state int
}

const (
	dotBegin     = iota // nothing written yet
	dotBeginLine        // after a line end
	dotData             // inside a line
	dotCR               // after a CR
)

func newDotWriter(w *bufio.Writer) io.WriteCloser { return &dotWriter{w: w} }

func (d *dotWriter) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		if d.state == dotData {
			run := bytes.IndexAny(b[n:], "\r\n")
			if run < 0 {
				run = len(b) - n
			}
			if run > 0 {
				w, err := d.w.Write(b[n : n+run])
				n += w
				if err != nil {
					return n, err
				}
				continue
			}
		}
		if err := d.writeByte(b[n]); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// writeByte is textproto's state machine for one byte.
func (d *dotWriter) writeByte(c byte) error {
	switch d.state {
	case dotBegin, dotBeginLine:
		d.state = dotData
		if c == '.' {
			d.w.WriteByte('.') // a leading dot is doubled
		}
		fallthrough
	case dotData:
		if c == '\r' {
			d.state = dotCR
		}
		if c == '\n' {
			d.w.WriteByte('\r')
			d.state = dotBeginLine
		}
	case dotCR:
		d.state = dotData
		if c == '\n' {
			d.state = dotBeginLine
		}
	}
	return d.w.WriteByte(c)
}

// Close ends the last line if needed, writes the final dot and flushes.
func (d *dotWriter) Close() error {
	switch d.state {
	default:
		d.w.WriteByte('\r')
		fallthrough
	case dotCR:
		d.w.WriteByte('\n')
		fallthrough
	case dotBeginLine:
		d.w.WriteString(".\r\n")
	}
	return d.w.Flush()
}
