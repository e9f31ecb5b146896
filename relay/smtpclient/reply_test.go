package smtpclient

import (
	"bufio"
	"strings"
	"testing"
)

func TestReadReply(t *testing.T) {
	cases := []struct {
		in   string
		want Reply
		err  bool
	}{
		{in: "250 2.1.5 ok\r\n", want: Reply{250, "2.1.5", "ok"}},
		{in: "550-5.1.1 no such\r\n550 5.1.1 user\r\n", want: Reply{550, "5.1.1", "no such\nuser"}},
		{in: "451 try later\r\n", want: Reply{451, "4.0.0", "try later"}},
		{in: "250-host\r\n250-SIZE 100\r\n250 8BITMIME\r\n", want: Reply{250, "2.0.0", "host\nSIZE 100\n8BITMIME"}},
		// An enhanced code of another class is text, not a code.
		{in: "550 4.1.1 odd\r\n", want: Reply{550, "5.0.0", "4.1.1 odd"}},
		{in: "250\r\n", want: Reply{250, "2.0.0", ""}},
		{in: "25x ok\r\n", err: true},
		{in: "250-a\r\n550 b\r\n", err: true},
		{in: "250-a\r\n", err: true},
		{in: "250 " + strings.Repeat("x", 5000) + "\r\n", err: true},
	}
	for _, tc := range cases {
		got, err := readReply(bufio.NewReaderSize(strings.NewReader(tc.in), 4096))
		if (err != nil) != tc.err || (!tc.err && got != tc.want) {
			t.Errorf("readReply(%.40q) = %+v, %v; want %+v (error %v)", tc.in, got, err, tc.want, tc.err)
		}
	}
}
