package smtpd

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// readBody reads a body through the DATA reader as a Backend would, and
// leaves br after the end-of-data line.
func readBody(br *bufio.Reader, maxSize int64, maxLine int) ([]byte, error) {
	var out bytes.Buffer
	_, err := io.Copy(&out, newDataReader(br, maxSize, maxLine))
	return out.Bytes(), err
}

func assertCRLFOnly(t *testing.T, b []byte) {
	t.Helper()
	for i, c := range b {
		if c == '\r' && (i+1 == len(b) || b[i+1] != '\n') || c == '\n' && (i == 0 || b[i-1] != '\r') {
			t.Fatalf("bare CR or LF at byte %d of %q", i, b)
		}
	}
}

func TestReadData(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		tooBig  bool
		tooLong bool
	}{
		{name: "plain", in: "a\r\nb\r\n.\r\n", want: "a\r\nb\r\n"},
		{name: "empty", in: ".\r\n", want: ""},
		{name: "dot unstuffing", in: "..a\r\n..\r\n.\r\n", want: ".a\r\n.\r\n"},
		{name: "bare LF normalised", in: "a\nb\r\n.\r\n", want: "a\r\nb\r\n"},
		{name: "bare CR normalised", in: "a\rb\r\n.\r\n", want: "a\r\nb\r\n"},
		{name: "LF dot LF is not the end", in: "a\n.\nb\r\n.\r\n", want: "a\r\n\r\nb\r\n"},
		{name: "dot after bare LF line is not the end", in: "a\n.\r\nb\r\n.\r\n", want: "a\r\n\r\nb\r\n"},
		{name: "binary bytes kept", in: "\x00\xff\x80\r\n.\r\n", want: "\x00\xff\x80\r\n"},
		{name: "at the size limit", in: "123456\r\n.\r\n", want: "123456\r\n"},
		{name: "over the size limit", in: "1234567\r\n.\r\n", tooBig: true},
		{name: "line over the limit", in: strings.Repeat("x", 21) + "\r\n.\r\n", tooLong: true},
		{name: "line over the buffer", in: strings.Repeat("x", 5000) + "\r\nok\r\n.\r\n", tooLong: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := bufio.NewReaderSize(strings.NewReader(tt.in+"NEXT\r\n"), 16)
			out, err := readBody(br, 8, 20)
			if tt.name == "line over the buffer" {
				br = bufio.NewReaderSize(strings.NewReader(tt.in+"NEXT\r\n"), 4096)
				out, err = readBody(br, 1<<20, 20)
			}
			tooBig, tooLong := errors.Is(err, ErrMessageTooBig), errors.Is(err, ErrMessageLineTooLong)
			if err != nil && !tooBig && !tooLong {
				t.Fatal(err)
			}
			if tooBig != tt.tooBig || tooLong != tt.tooLong {
				t.Fatalf("tooBig=%v tooLong=%v, want %v %v", tooBig, tooLong, tt.tooBig, tt.tooLong)
			}
			if !tt.tooBig && !tt.tooLong && string(out) != tt.want {
				t.Fatalf("got %q, want %q", out, tt.want)
			}
			rest, _ := br.ReadString('\n')
			if rest != "NEXT\r\n" {
				t.Fatalf("reader not left after the end of data: next line %q", rest)
			}
		})
	}
}

func FuzzReadData(f *testing.F) {
	for _, s := range []string{"a\r\n.\r\n", "\n.\n", "\r.\r\n.\r\n", "..\r\n.\r\n", "x\ry\nz\r\n.\r\n", ".\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := readBody(bufio.NewReaderSize(bytes.NewReader(in), 16), 1<<20, 1<<10)
		if err != nil {
			return
		}
		// Whatever came in, what is stored has CRLF line ends only, and sent
		// on to the next hop (dot-stuffed) it reads back the same: no hop can
		// find a message boundary that this one did not.
		assertCRLFOnly(t, out)
		again, err := readBody(bufio.NewReader(bytes.NewReader(dotStuff(out))), 1<<20, 1<<10)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, out) {
			t.Fatalf("relayed %q reads back as %q", out, again)
		}
	})
}

// dotStuff is what an SMTP client does to a message before DATA.
func dotStuff(msg []byte) []byte {
	var b bytes.Buffer
	for line := range bytes.Lines(msg) {
		if line[0] == '.' {
			b.WriteByte('.')
		}
		b.Write(line)
	}
	b.WriteString(".\r\n")
	return b.Bytes()
}
