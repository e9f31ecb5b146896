package smtpclient

import (
	"bufio"
	"bytes"
	"net/textproto"
	"testing"
)

// stuffed is what w writes for chunks, written one after another.
func stuffed(t testing.TB, fast bool, chunks ...[]byte) []byte {
	t.Helper()
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	var w interface {
		Write([]byte) (int, error)
		Close() error
	}
	if fast {
		w = newDotWriter(bw)
	} else {
		w = textproto.NewWriter(bw).DotWriter()
	}
	for _, c := range chunks {
		if n, err := w.Write(c); err != nil || n != len(c) {
			t.Fatalf("write %q: %d, %v", c, n, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// splitAt cuts b at the given offsets (taken modulo its length).
func splitAt(b []byte, cuts ...int) [][]byte {
	var out [][]byte
	start := 0
	for _, c := range cuts {
		if len(b) == 0 {
			break
		}
		c %= len(b) + 1
		if c > start {
			out = append(out, b[start:c])
			start = c
		}
	}
	return append(out, b[start:])
}

// TestDotWriterMatchesTextproto: the relay's dot-stuffing writes the same
// bytes as net/textproto's, however the body is cut into writes.
func TestDotWriterMatchesTextproto(t *testing.T) {
	for _, body := range []string{
		"", ".", "..", "a", "a\r\n", "a\n", "\r", "\n", "\r\r\n", "\r.\n", ".\r\n.\r\n",
		"Subject: x\r\n\r\n.hidden\r\nline\nbare lf\r\n.\r\nend",
		"no line end at all", "\n.\n..\n...", "x\rx\r\nx\n\r",
		"\r\r\r\n", "a\r\r\n.b", "\r\r\r\r\n\r\r\n", "a\r\rb\r\n", "\r\n\r\r\n.",
	} {
		for _, cuts := range [][]int{nil, {1}, {1, 2, 3}, {2, 5}, {len(body) / 2}, {1, 2, 3, 4, 5, 6, 7}} {
			chunks := splitAt([]byte(body), cuts...)
			want := stuffed(t, false, chunks...)
			if got := stuffed(t, true, chunks...); !bytes.Equal(got, want) {
				t.Errorf("%q cut at %v:\n got %q\nwant %q", body, cuts, got, want)
			}
		}
	}
}

func FuzzDotWriter(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\n.a\nb\r\r\n."), 3, 7)
	f.Fuzz(func(t *testing.T, body []byte, cut1, cut2 int) {
		if cut1 < 0 || cut2 < 0 {
			return
		}
		chunks := splitAt(body, cut1, cut2)
		if got, want := stuffed(t, true, chunks...), stuffed(t, false, chunks...); !bytes.Equal(got, want) {
			t.Fatalf("%q cut at %d, %d:\n got %q\nwant %q", body, cut1, cut2, got, want)
		}
	})
}

func BenchmarkDotWriter(b *testing.B) {
	body := bytes.Repeat([]byte(string(bytes.Repeat([]byte("x"), 76))+"\r\n"), 100_000/78)
	for _, impl := range []struct {
		name string
		fast bool
	}{{"textproto", false}, {"relay", true}} {
		b.Run(impl.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				stuffed(b, impl.fast, body)
			}
		})
	}
}
