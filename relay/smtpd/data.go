package smtpd

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

var crlf = []byte("\r\n")

// dataResult says how a DATA transfer ended. The body has always been read up
// to and including the end-of-data line, so the session stays in step with
// the client whatever is refused.
type dataResult struct {
	size     int64 // bytes written, in stored form
	tooBig   bool  // more than the size limit arrived; the rest was discarded
	tooLong  bool  // a line exceeded the line limit; the rest was discarded
	writeErr error // the destination failed; the rest was discarded
}

// readData copies a DATA body from br to w until the end-of-data line.
//
// Only <CRLF>.<CRLF> ends the body: a "." line counts as the end only when the
// line before it ended with a real CRLF, so `\n.\n`, `\r.\r` and `\n.\r\n`
// never split one submission into two (SMTP smuggling). Lines that end in a
// bare LF, and bare CRs inside a line, are stored as CRLF line ends, as
// Postfix's `normalize` mode does: every hop after us then agrees on where
// lines end. Leading dots are unstuffed (RFC 5321 §4.5.2).
//
// The size limit is enforced while reading: past maxSize nothing more is
// written and the body is discarded up to its end. The returned error is
// only a read error (connection lost or timed out).
func readData(br *bufio.Reader, w io.Writer, maxSize int64, maxLine int) (dataResult, error) {
	var res dataResult
	prevCRLF := true // the DATA command line ended with CRLF
	discarding := false
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the read buffer is over any sane line limit.
			res.tooLong, discarding = true, true
			if prevCRLF, err = skipLine(br, line[len(line)-1] == '\r'); err != nil {
				return res, err
			}
			continue
		}
		if err != nil {
			return res, err
		}
		if prevCRLF && len(line) == 3 && line[0] == '.' && line[1] == '\r' {
			return res, nil
		}
		content, realCRLF := trimEOL(line)
		prevCRLF = realCRLF
		if len(content) > 0 && content[0] == '.' {
			content = content[1:]
		}
		if len(content) > maxLine {
			res.tooLong, discarding = true, true
		}
		if discarding {
			continue
		}
		n, err := writeLine(w, content, line, realCRLF)
		res.size += int64(n)
		if err != nil {
			res.writeErr, discarding = err, true
		} else if res.size > maxSize {
			res.tooBig, discarding = true, true
		}
	}
}

// trimEOL splits off the line end: CRLF, or a bare LF.
func trimEOL(line []byte) (content []byte, realCRLF bool) {
	n := len(line) - 1 // line ends with '\n'
	if n > 0 && line[n-1] == '\r' {
		return line[:n-1], true
	}
	return line[:n], false
}

// writeLine writes content with a CRLF, turning bare CRs inside it into line
// ends. The common case, a clean CRLF line with no dot to unstuff, is written
// from the read buffer in one call.
func writeLine(w io.Writer, content, line []byte, realCRLF bool) (int, error) {
	if bytes.IndexByte(content, '\r') < 0 {
		if realCRLF && len(line) == len(content)+2 {
			return w.Write(line)
		}
		n, err := w.Write(content)
		if err != nil {
			return n, err
		}
		m, err := w.Write(crlf)
		return n + m, err
	}
	total := 0
	for piece := range bytes.SplitSeq(content, []byte{'\r'}) {
		n, err := w.Write(piece)
		total += n
		if err != nil {
			return total, err
		}
		n, err = w.Write(crlf)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
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
