package smtpd

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
)

// FuzzSASL feeds arbitrary AUTH lines through the decoding and both
// mechanisms: nothing may panic, and a mechanism only ever authenticates the
// very username and key the client encoded.
func FuzzSASL(f *testing.F) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	f.Add("LOGIN", b64("ifaxin#1001"), b64("key"))
	f.Add("LOGIN", "", b64("ifaxin"))
	f.Add("PLAIN", b64("\x00ifaxin\x00key"), "")
	f.Add("PLAIN", "=", "*")
	f.Add("PLAIN", "!!", "====")
	f.Fuzz(func(t *testing.T, mech, first, second string) {
		var calls [][2]string
		record := func(user, key string) error {
			calls = append(calls, [2]string{user, key})
			return nil
		}
		var server sasl.Server
		switch strings.ToUpper(mech) {
		case "LOGIN":
			server = newLoginServer(record)
		case "PLAIN":
			server = sasl.NewPlainServer(func(_, user, key string) error { return record(user, key) })
		default:
			return
		}
		var decoded [][]byte
		response := []byte(nil)
		for _, line := range []string{first, second, second} {
			_, done, err := server.Next(response)
			if err != nil || done {
				break
			}
			if response, err = decodeSASL(line); err != nil {
				return
			}
			decoded = append(decoded, response)
		}
		if len(calls) > 1 {
			t.Fatalf("authenticated %d times in one exchange", len(calls))
		}
		if len(calls) == 1 {
			joined := bytes.Join(decoded, []byte{0})
			if !bytes.Contains(joined, []byte(calls[0][0])) || !bytes.Contains(joined, []byte(calls[0][1])) {
				t.Fatalf("authenticated %q with a key that was not sent", calls[0][0])
			}
		}
	})
}

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"<a@b.c>", "<> SIZE=10", "a@b.c BODY=8BITMIME", "<@r1,@r2:a@b.c>", "<a b@c>", "<a@b.c", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		addr, params, ok := parsePath(arg)
		if !ok {
			return
		}
		if strings.ContainsAny(addr, " <>\r\n\x00") || len(addr) > maxPathLength {
			t.Fatalf("parsePath(%q) accepted address %q", arg, addr)
		}
		for _, p := range params {
			if p == "" || strings.ContainsAny(p, " ") {
				t.Fatalf("parsePath(%q) gave parameter %q", arg, p)
			}
		}
	})
}
