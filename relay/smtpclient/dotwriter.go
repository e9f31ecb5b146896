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
		// Inside a line only a LF needs the state machine: the bytes
		// before it are copied whole and their effect on the state
		// (runState) read from their end. IndexByte is vectorised;
		// IndexAny with two bytes tests them one by one, and was a tenth
		// of the relay's CPU delivering 100 KB messages.
		if d.state == dotData || d.state == dotCR {
			run := bytes.IndexByte(b[n:], '\n')
			if run < 0 {
				run = len(b) - n
			}
			if run > 0 {
				w, err := d.w.Write(b[n : n+run])
				d.state = runState(d.state, b[n:n+w])
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

// runState is the state after run, bytes with no LF, written from state s
// (dotData or dotCR). writeByte moves from dotData to dotCR on a CR and
// from dotCR back to dotData on any byte but LF, a CR included: so only
// the CRs that end run count, and an odd number of them (counting the CR
// that s may already stand for when run is only CRs) leaves a CR pending.
func runState(s int, run []byte) int {
	crs := 0
	for crs < len(run) && run[len(run)-1-crs] == '\r' {
		crs++
	}
	if crs == len(run) && s == dotCR {
		crs++
	}
	if crs%2 == 1 {
		return dotCR
	}
	return dotData
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
