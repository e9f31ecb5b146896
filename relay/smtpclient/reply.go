package smtpclient

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

const (
	// maxReplyLine bounds one reply line; RFC 5321 §4.5.3.1.5 says 512,
	// servers send longer texts, and a hostile one could send endless bytes.
	maxReplyLine = 4096
	// maxReplyLines bounds a multi-line reply (an EHLO lists extensions).
	maxReplyLines = 128
)

// Reply is one SMTP reply.
type Reply struct {
	Code int
	// Enhanced is the RFC 3463 code from the reply's first line, or one
	// derived from Code's class when the server sent none.
	Enhanced string
	// Text is the reply text without codes, one line of it per line.
	Text string
}

func (r Reply) String() string {
	return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text)
}

// OneLine is the reply's text with its lines joined by "; ", for a
// delivery status and for logs.
func (r Reply) OneLine() string {
	return strings.ReplaceAll(r.Text, "\n", "; ")
}

// ReplyError is a reply that refused a command.
type ReplyError struct {
	Cmd   string
	Reply Reply
}

func (e *ReplyError) Error() string {
	return fmt.Sprintf("%s: server said %s", e.Cmd, e.Reply)
}

// readReply reads one possibly multi-line reply.
func readReply(br *bufio.Reader) (Reply, error) {
	var r Reply
	var lines []string
	for i := 0; ; i++ {
		if i >= maxReplyLines {
			return Reply{}, errors.New("reply has too many lines")
		}
		l, err := readReplyLine(br, r.Code)
		if err != nil {
			return Reply{}, err
		}
		r.Code = l.code
		lines = append(lines, l.text)
		if !l.more {
			break
		}
	}
	r.Enhanced, lines[0] = splitEnhanced(r.Code, lines[0])
	// Each continuation line repeats the enhanced code (RFC 2034 §4).
	for i := 1; i < len(lines); i++ {
		if e, rest := splitEnhanced(r.Code, lines[i]); e == r.Enhanced {
			lines[i] = rest
		}
	}
	if r.Enhanced == "" {
		r.Enhanced = fmt.Sprintf("%d.0.0", r.Code/100)
	}
	r.Text = strings.Join(lines, "\n")
	return r, nil
}

// replyLine is one line of a reply: "250-text" has more lines after it,
// "250 text" is the last.
type replyLine struct {
	code int
	text string
	more bool
}

// readReplyLine reads one line of a reply whose earlier lines had code
// want (0 before the first line).
func readReplyLine(br *bufio.Reader, want int) (replyLine, error) {
	line, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || len(line) > maxReplyLine {
		return replyLine{}, errors.New("reply line too long")
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return replyLine{}, fmt.Errorf("read reply: %w", err)
	}
	s := strings.TrimRight(string(line), "\r\n")
	if len(s) < 3 {
		return replyLine{}, fmt.Errorf("malformed reply %q", s)
	}
	code, err := strconv.Atoi(s[:3])
	if err != nil || code < 200 || code > 599 {
		return replyLine{}, fmt.Errorf("malformed reply %q", s)
	}
	if want != 0 && code != want {
		return replyLine{}, fmt.Errorf("reply changes code mid-way: %q", s)
	}
	if len(s) > 3 && s[3] != '-' && s[3] != ' ' {
		return replyLine{}, fmt.Errorf("malformed reply %q", s)
	}
	l := replyLine{code: code, more: len(s) > 3 && s[3] == '-'}
	if len(s) > 4 {
		l.text = s[4:]
	}
	return l, nil
}

// splitEnhanced takes an RFC 3463 code off the front of text when there is
// one whose class matches code's.
func splitEnhanced(code int, text string) (string, string) {
	word, rest, _ := strings.Cut(text, " ")
	parts := strings.Split(word, ".")
	if len(parts) != 3 || parts[0] != strconv.Itoa(code/100) {
		return "", text
	}
	for _, p := range parts[1:] {
		if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 999 || len(p) > 3 {
			return "", text
		}
	}
	return word, rest
}

// parseExtensions reads the EHLO reply's lines after the first: keyword and
// parameters.
func parseExtensions(r Reply) map[string]string {
	ext := make(map[string]string)
	lines := strings.Split(r.Text, "\n")
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(l), " ")
		if k != "" {
			ext[strings.ToUpper(k)] = v
		}
	}
	return ext
}
