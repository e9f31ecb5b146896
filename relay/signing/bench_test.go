package signing

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/api/wire"
)

// BenchmarkSign is what DKIM adds to a 10 KB message at submission: the
// body hashed as it streams and one RSA-2048 signature, or that and an
// Ed25519 one. Report it beside BenchmarkSubmit's messages a second.
func BenchmarkSign(b *testing.B) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	msg := []byte("From: news@acme.example\r\nTo: a@example.net\r\nSubject: hi\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 160))
	for _, bc := range []struct {
		name string
		keys []wire.DKIMKey
	}{
		{"rsa2048", []wire.DKIMKey{{Domain: "acme.example", Selector: "s", PrivateKey: keyPEM(b, rsaKey)}}},
		{"rsa2048+ed25519", []wire.DKIMKey{{Domain: "acme.example", Selector: "s", PrivateKey: keyPEM(b, rsaKey)},
			{Domain: "acme.example", Selector: "e", PrivateKey: keyPEM(b, edKey)}}},
	} {
		ring := Parse(bc.keys)
		keys := ring.For("acme.example")
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				s, err := NewSigner(keys, time.Now())
				if err != nil {
					b.Fatal(err)
				}
				s.Write(msg)
				if _, err := s.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
