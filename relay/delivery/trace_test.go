package delivery

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/relay/spool"
)

// stripReference is StripHeader written the obvious way, on whole lines in
// memory, for the fuzz target to compare against. The one rule that depends
// on the buffer size: a line longer than the buffer whose first bufSize
// bytes are the stripped name and white space is taken for that field.
func stripReference(msg []byte, name string, bufSize int) []byte {
	var out bytes.Buffer
	rest := msg
	dropping := false
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		line := rest
		if i >= 0 {
			line = rest[:i+1]
		}
		rest = rest[len(line):]
		switch {
		case string(line) == "\r\n" || string(line) == "\n":
			out.Write(line)
			out.Write(rest)
			return out.Bytes()
		case line[0] == ' ' || line[0] == '\t':
		case isField(line):
			colon := bytes.IndexByte(line, ':')
			dropping = strings.EqualFold(strings.TrimRight(string(line[:colon]), " \t"), name)
		case len(line) > bufSize && paddedName(line[:bufSize], name):
			dropping = true
		default:
			out.Write(line)
			out.Write(rest)
			return out.Bytes()
		}
		if !dropping {
			out.Write(line)
		}
	}
	return out.Bytes()
}

func paddedName(piece []byte, name string) bool {
	var f fieldScan
	decided, _ := f.feed(piece)
	return !decided && f.nameIs([]byte(name))
}

func TestStripHeader(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"absent", "Subject: a\r\n\r\nbody\r\n", "Subject: a\r\n\r\nbody\r\n"},
		{"first", "X-Mailfleet-Label: x\r\nSubject: a\r\n\r\nb\r\n", "Subject: a\r\n\r\nb\r\n"},
		{"case and folding", "Subject: a\r\nx-mailfleet-LABEL: x\r\n y\r\n\tz\r\nTo: b\r\n\r\nb\r\n", "Subject: a\r\nTo: b\r\n\r\nb\r\n"},
		{"space before colon", "X-Mailfleet-Label : x\r\nSubject: a\r\n\r\n", "Subject: a\r\n\r\n"},
		{"padded name", "X-Mailfleet-Label" + strings.Repeat(" ", 40) + ": x\r\nSubject: a\r\n\r\n", "Subject: a\r\n\r\n"},
		{"long other name without colon", strings.Repeat("a", 40) + "\r\nX-Mailfleet-Label: x\r\n", strings.Repeat("a", 40) + "\r\nX-Mailfleet-Label: x\r\n"},
		{"prefix is another field", "X-Mailfleet-Labels: x\r\n\r\n", "X-Mailfleet-Labels: x\r\n\r\n"},
		{"body untouched", "Subject: a\r\n\r\nX-Mailfleet-Label: x\r\n", "Subject: a\r\n\r\nX-Mailfleet-Label: x\r\n"},
		{"non-header line ends header", "Subject: a\r\nnot a header\r\nX-Mailfleet-Label: x\r\n", "Subject: a\r\nnot a header\r\nX-Mailfleet-Label: x\r\n"},
		{"bare LF", "X-Mailfleet-Label: x\n y\nSubject: a\n\nbody", "Subject: a\n\nbody"},
		{"no end of line", "Subject: a\r\nX-Mailfleet-Label: x", "Subject: a\r\n"},
		{"empty", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, size := range []int{20, 32, stripBufferSize} {
				var out bytes.Buffer
				n, err := stripHeader(&out, strings.NewReader(tc.in), "X-Mailfleet-Label", size)
				if err != nil || out.String() != tc.want || n != int64(out.Len()) {
					t.Fatalf("buffer %d: got %q, %d, %v; want %q", size, out.String(), n, err, tc.want)
				}
			}
		})
	}
}

// A name padded with white space beyond the buffer is stripped even
// without a colon, so padding cannot push a forged field past the check.
func TestStripHeaderPaddedBeyondBuffer(t *testing.T) {
	in := "X-Mailfleet-Label" + strings.Repeat(" ", 40) + "x\r\nSubject: a\r\n\r\n"
	var out bytes.Buffer
	if _, err := stripHeader(&out, strings.NewReader(in), "X-Mailfleet-Label", 20); err != nil || out.String() != "Subject: a\r\n\r\n" {
		t.Fatalf("got %q, %v", out.String(), err)
	}
}

func TestStripHeaderLongLines(t *testing.T) {
	long := strings.Repeat("v", 100)
	in := "X-Mailfleet-Label: " + long + "\r\n\t" + long + "\r\nSubject: " + long + "\r\n\r\n" + long
	want := "Subject: " + long + "\r\n\r\n" + long
	var out bytes.Buffer
	if _, err := stripHeader(&out, strings.NewReader(in), "X-Mailfleet-Label", 20); err != nil || out.String() != want {
		t.Fatalf("got %q, %v", out.String(), err)
	}
}

func FuzzStripHeader(f *testing.F) {
	f.Add([]byte("X-Mailfleet-Label: x\r\n y\r\nSubject: a\r\n\r\nX-Mailfleet-Label: body\r\n"), 16)
	f.Add([]byte("Subject: a\nx-mailfleet-label:\n\n"), 17)
	f.Add([]byte("X-Mailfleet-Label:"+strings.Repeat("a", 70)+"\r\n\r\n"), 16)
	f.Add([]byte("\r\n"), 40)
	f.Add([]byte("junk\r\nX-Mailfleet-Label: x\r\n"), 32)
	f.Fuzz(func(t *testing.T, msg []byte, size int) {
		size = 20 + abs(size)%64
		var out bytes.Buffer
		n, err := stripHeader(&out, bytes.NewReader(msg), "X-Mailfleet-Label", size)
		if err != nil {
			t.Fatal(err)
		}
		if n != int64(out.Len()) {
			t.Fatalf("returned %d, wrote %d", n, out.Len())
		}
		want := stripReference(msg, "X-Mailfleet-Label", size)
		if !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("buffer %d:\n in  %q\n got %q\nwant %q", size, msg, out.Bytes(), want)
		}
		// Whatever the input, a reader of the output finds no field of that
		// name in its header section.
		for _, line := range bytes.SplitAfter(headerOf(out.Bytes()), []byte("\n")) {
			if len(line) > 0 && isField(line) && fieldNamed(line, []byte("X-Mailfleet-Label")) {
				t.Fatalf("output header keeps %q", line)
			}
		}
	})
}

// headerOf is the header section of msg as stripReference delimits it.
func headerOf(msg []byte) []byte {
	var out []byte
	for _, line := range bytes.SplitAfter(msg, []byte("\n")) {
		if len(line) == 0 || string(line) == "\r\n" || string(line) == "\n" ||
			!(line[0] == ' ' || line[0] == '\t' || isField(line)) {
			return out
		}
		out = append(out, line...)
	}
	return out
}

func abs(n int) int {
	if n < 0 {
		if n == -n {
			return 0
		}
		return -n
	}
	return n
}

func TestTraceHeaders(t *testing.T) {
	env := spool.Envelope{
		ID: "q1", APIUser: "acme", From: "a@acme.example",
		ReceivedAt: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC),
		RemoteAddr: "[2001:db8::1]:4000", Helo: "evil\r\nX-Injected: yes (x)",
	}
	got := string(Trace{Hostname: "relay.test", LabelHeader: "X-Acme-Tag"}.Headers(env, []string{"a@example.org", "b@example.org"}))
	want := "Received: from evil??X-Injected:?yes??x? ([IPv6:2001:db8::1])\r\n" +
		"\tby relay.test (mailfleet) with ESMTPA id q1;\r\n" +
		"\tSun, 01 Mar 2026 12:00:00 +0000\r\n" +
		"X-Acme-Tag: account=acme\r\n"
	if got != want {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
}

// TestTraceHeadersHTTP: a message from the HTTP send API says so in its
// Received header, not ESMTPSA.
func TestTraceHeadersHTTP(t *testing.T) {
	env := spool.Envelope{ID: "q2", APIUser: "acme", RemoteAddr: "192.0.2.7:4000", TLS: true, Via: spool.ViaHTTP,
		ReceivedAt: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	got := string(Trace{Hostname: "relay.test"}.Headers(env, []string{"a@example.org"}))
	if !strings.Contains(got, "\tby relay.test (mailfleet) with HTTPS id q2\r\n") {
		t.Fatalf("Received header of an API message:\n%s", got)
	}
}

// TestReceivedNamesTheClientTLS: the Received field says which TLS
// version protected the submission, as Postfix's does; a version that is
// not a token cannot break the field.
func TestReceivedNamesTheClientTLS(t *testing.T) {
	env := spool.Envelope{ID: "q1", APIUser: "acme", RemoteAddr: "192.0.2.7:1", Helo: "client.example", TLS: true, TLSVersion: "TLSv1.3"}
	h := string(Trace{Hostname: "mx.example"}.Headers(env, []string{"a@example.org"}))
	if !strings.Contains(h, "Received: from client.example ([192.0.2.7])\r\n\t(using TLSv1.3)\r\n\tby mx.example (mailfleet) with ESMTPSA id q1") {
		t.Fatalf("%q", h)
	}
	env.TLSVersion = "TLSv1.3\r\nX-Injected: 1"
	if h := string(Trace{Hostname: "mx.example"}.Headers(env, nil)); strings.Contains(h, "\r\nX-Injected") {
		t.Fatalf("%q", h)
	}
}
