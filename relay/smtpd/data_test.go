package smtpd

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

func TestMessageSizeLimit(t *testing.T) {
	env := startRelay(t)
	c := dialRaw(t, env.addr("smtp"))
	c.login(userMain, env.keys[userMain])
	// A body of exactly n bytes: 100-byte lines, CRLF included.
	body := func(n int) string {
		line := strings.Repeat("a", 98) + "\r\n"
		full := n/100 - 1
		return strings.Repeat(line, full) + strings.Repeat("b", n-100*full-2) + "\r\n"
	}
	if got := c.send("a@ifaxin.com", "b@example.com", body(16_000_000)); !queuedReply.MatchString(got) {
		t.Fatalf("16,000,000 bytes: got %q, want it queued", got)
	}
	if got := c.send("a@ifaxin.com", "b@example.com", body(16_000_001)); got != "552 5.3.4 Message size exceeds fixed limit" {
		t.Fatalf("16,000,001 bytes: got %q", got)
	}
	// The session is still in step and usable.
	if got := c.send("a@ifaxin.com", "b@example.com", "Subject: small\r\n\r\nok\r\n"); !queuedReply.MatchString(got) {
		t.Fatalf("after a refused message: got %q", got)
	}
	stored := env.stored()
	sizes := map[int]int{}
	for _, m := range stored {
		sizes[len(m.body)]++
	}
	if len(stored) != 2 || sizes[16_000_000] != 1 {
		t.Fatalf("stored %d messages with sizes %v; want the 16,000,000-byte one and the small one", len(stored), sizes)
	}
}

// TestSmuggling sends the known smuggling probes: each submission must stay
// exactly one message, with the would-be second message inside its body.
func TestSmuggling(t *testing.T) {
	probes := map[string]string{
		`\n.\n`:   "\n.\n",
		`\r.\r`:   "\r.\r",
		`\n.\r\n`: "\n.\r\n",
		`\r.\r\n`: "\r.\r\n",
		`\r\n.\r`: "\r\n.\r",
		`\r\n.\n`: "\r\n.\n",
	}
	for name, probe := range probes {
		t.Run(name, func(t *testing.T) {
			env := startRelay(t)
			c := dialRaw(t, env.addr("smtp"))
			c.login(userMain, env.keys[userMain])
			smuggled := "MAIL FROM:<admin@ifaxin.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n"
			got := c.send("a@ifaxin.com", "b@example.com", "Subject: real\r\n\r\nbody"+probe+smuggled)
			if !queuedReply.MatchString(got) {
				t.Fatalf("got %q", got)
			}
			c.expect("NOOP", "250 2.0.0 OK")
			stored := env.stored()
			if len(stored) != 1 {
				t.Fatalf("stored %d messages, want exactly 1", len(stored))
			}
			for _, m := range stored {
				if !bytes.Contains(m.body, []byte("Subject: smuggled")) || m.env.To[0] != "b@example.com" {
					t.Fatalf("the probe's text should be part of the one message: %q", m.body)
				}
				assertCRLFOnly(t, m.body)
			}
		})
	}
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
			var out bytes.Buffer
			res, err := readData(br, &out, 8, 20)
			if tt.name == "line over the buffer" {
				br = bufio.NewReaderSize(strings.NewReader(tt.in+"NEXT\r\n"), 4096)
				out.Reset()
				res, err = readData(br, &out, 1<<20, 20)
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.tooBig != tt.tooBig || res.tooLong != tt.tooLong {
				t.Fatalf("tooBig=%v tooLong=%v, want %v %v", res.tooBig, res.tooLong, tt.tooBig, tt.tooLong)
			}
			if !tt.tooBig && !tt.tooLong && out.String() != tt.want {
				t.Fatalf("got %q, want %q", out.String(), tt.want)
			}
			rest, _ := br.ReadString('\n')
			if rest != "NEXT\r\n" {
				t.Fatalf("reader not left after the end of data: next line %q", rest)
			}
		})
	}
}

// TestMessageLineLimit: a message line over maxLineLength (CRLF excluded)
// refuses the message with 500 5.5.2, whether the line fits the session's
// read buffer or not; the body is read to its end, so the session goes on
// and its next message, with lines of exactly the limit, is queued.
func TestMessageLineLimit(t *testing.T) {
	env := startRelay(t, func(c *Config, _ *Deps) { c.MaxLineLength = 100 })
	c := dialRaw(t, env.addr("smtp"))
	c.login(userMain, env.keys[userMain])
	for _, n := range []int{101, 10_000} {
		got := c.send("a@ifaxin.com", "b@example.com", "Subject: long\r\n\r\n"+strings.Repeat("x", n)+"\r\nafter\r\n")
		if got != "500 5.5.2 Message line too long (limit 100 bytes)" {
			t.Fatalf("line of %d bytes: got %q", n, got)
		}
		if len(env.stored()) != 0 {
			t.Fatal("a refused message was spooled")
		}
	}
	if got := c.send("a@ifaxin.com", "b@example.com", "Subject: fits\r\n\r\n"+strings.Repeat("y", 100)+"\r\n"); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("after the refusals, a message with lines at the limit: got %q, want 250", got)
	}
	if len(env.stored()) != 1 {
		t.Fatalf("%d messages spooled, want the one that fits", len(env.stored()))
	}
}

func FuzzReadData(f *testing.F) {
	for _, s := range []string{"a\r\n.\r\n", "\n.\n", "\r.\r\n.\r\n", "..\r\n.\r\n", "x\ry\nz\r\n.\r\n", ".\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 16)
		var out bytes.Buffer
		res, err := readData(br, &out, 1<<20, 1<<10)
		if err != nil || res.tooBig || res.tooLong {
			return
		}
		// Whatever came in, what is stored has CRLF line ends only, and sent
		// on to the next hop (dot-stuffed) it reads back the same: no hop can
		// find a message boundary that this one did not.
		assertCRLFOnly(t, out.Bytes())
		var again bytes.Buffer
		if _, err := readData(bufio.NewReader(bytes.NewReader(dotStuff(out.Bytes()))), &again, 1<<20, 1<<10); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again.Bytes(), out.Bytes()) {
			t.Fatalf("relayed %q reads back as %q", out.Bytes(), again.Bytes())
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
