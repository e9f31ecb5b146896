// Go refuses to make RSA keys under 1024 bits unless told; one test needs
// a weak key to show the relay leaves it out.
//
//go:debug rsa1024min=0
package signing

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/mailfleet/mailfleet/api/wire"
)

// keyPEM makes a key as the operator does: PKCS #8 in PEM.
func keyPEM(t testing.TB, key any) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// zone is the TXT records a verifier finds, by name.
type zone map[string]string

func (z zone) lookup(name string) ([]string, error) {
	if v, ok := z[name]; ok {
		return []string{v}, nil
	}
	return nil, errors.New("no such record")
}

func (z zone) publish(t testing.TB, domain, selector string, pub any) {
	t.Helper()
	v, err := wire.DKIMRecordValue(pub)
	if err != nil {
		t.Fatal(err)
	}
	z[wire.DKIMRecordName(selector, domain)] = v
}

const message = "From: Shop <news@mail.acme.example>\r\n" +
	"To: someone@example.net\r\n" +
	"Subject: Hello  there\r\n" +
	"Date: Sat, 05 Dec 2026 08:00:00 +0000\r\n" +
	"Message-ID: <1@acme.example>\r\n" +
	"\r\n" +
	"Body line one\r\n" +
	"line two with trailing space \r\n"

// sign signs message with keys as the submission path does: bytes in,
// fields out, and returns the message as delivered.
func sign(t testing.TB, keys []Key, msg string) string {
	t.Helper()
	s, err := NewSigner(keys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for chunk := range strings.SplitSeq(msg, "\n") { // odd write sizes on purpose
		s.Write([]byte(chunk))
		s.Write([]byte("\n"))
	}
	fields, err := s.Close()
	if err != nil {
		t.Fatal(err)
	}
	return fields + msg
}

func TestSignVerifies(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ring := Parse([]wire.DKIMKey{
		{Domain: "acme.example", Selector: "mailfleet-1", PrivateKey: keyPEM(t, rsaKey)},
		{Domain: "acme.example", Selector: "mailfleet-1-ed", PrivateKey: keyPEM(t, edKey)},
	})
	if ring.Problems != nil || ring.Len() != 2 {
		t.Fatalf("keyring: %d keys, %v", ring.Len(), ring.Problems)
	}
	z := zone{}
	z.publish(t, "acme.example", "mailfleet-1", rsaKey.Public())
	z.publish(t, "acme.example", "mailfleet-1-ed", edKey.Public())

	keys := ring.For("mail.acme.example")
	if len(keys) != 2 {
		t.Fatalf("keys for a subdomain: %d, want the parent's 2", len(keys))
	}
	signed := sign(t, keys, message)
	if strings.Count(signed, "DKIM-Signature:") != 2 {
		t.Fatalf("want two signatures:\n%s", signed)
	}
	for _, want := range []string{"a=rsa-sha256", "a=ed25519-sha256", "c=relaxed/relaxed", "d=acme.example"} {
		if !strings.Contains(signed, want) {
			t.Errorf("signature lacks %s", want)
		}
	}
	if !strings.Contains(strings.ToLower(signed), "h=from:from:") {
		t.Errorf("From is not oversigned:\n%s", signed)
	}
	verifications, err := dkim.VerifyWithOptions(strings.NewReader(signed), &dkim.VerifyOptions{LookupTXT: z.lookup})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range verifications {
		if v.Err != nil {
			t.Errorf("signature by %s does not verify: %v", v.Domain, v.Err)
		}
	}

	// A second From added on the way breaks the signature: oversigning.
	forged := strings.Replace(signed, "From: Shop", "From: ceo@bank.example\r\nFrom: Shop", 1)
	verifications, _ = dkim.VerifyWithOptions(strings.NewReader(forged), &dkim.VerifyOptions{LookupTXT: z.lookup})
	for _, v := range verifications {
		if v.Err == nil {
			t.Error("a message with a From added after signing still verifies")
		}
	}
}

func TestKeyringFor(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024)
	pemKey := keyPEM(t, rsaKey)
	ring := Parse([]wire.DKIMKey{
		{Domain: "acme.example", Selector: "a", PrivateKey: pemKey},
		{Domain: "news.acme.example", Selector: "n", PrivateKey: pemKey},
	})
	for from, want := range map[string]string{
		"acme.example":          "acme.example",
		"ACME.example":          "acme.example",
		"x.acme.example":        "acme.example",
		"news.acme.example":     "news.acme.example",
		"a.news.acme.example":   "news.acme.example",
		"evilacme.example":      "",
		"acme.example.evil.net": "",
		"":                      "",
	} {
		keys := ring.For(from)
		got := ""
		if len(keys) > 0 {
			got = keys[0].Domain
		}
		if got != want || len(keys) > 1 {
			t.Errorf("For(%q) = %d keys of %q, want one of %q", from, len(keys), got, want)
		}
	}
	var none *Keyring
	if none.For("acme.example") != nil || none.Len() != 0 {
		t.Error("a nil keyring signs")
	}
}

// TestParseLeavesOutBadKeys: a key the relay cannot use (a tenant wrote
// its own into the domain's Secret, say) is left out, named without its
// material, and the others still sign.
func TestParseLeavesOutBadKeys(t *testing.T) {
	good, _ := rsa.GenerateKey(rand.Reader, 1024)
	weak, err := rsa.GenerateKey(rand.Reader, 512)
	if err != nil {
		t.Fatal(err)
	}
	secret := "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LW1hdGVyaWFs\n-----END PRIVATE KEY-----\n"
	ring := Parse([]wire.DKIMKey{
		{Domain: "acme.example", Selector: "ok", PrivateKey: keyPEM(t, good)},
		{Domain: "acme.example", Selector: "weak", PrivateKey: keyPEM(t, weak)},
		{Domain: "acme.example", Selector: "junk", PrivateKey: secret},
		{Domain: "acme.example", Selector: "bad\r\nselector", PrivateKey: keyPEM(t, good)},
		{Domain: "*.acme.example", Selector: "wild", PrivateKey: keyPEM(t, good)},
	})
	if ring.Len() != 1 || ring.For("acme.example")[0].Selector != "ok" {
		t.Fatalf("kept %d keys, want only the usable one", ring.Len())
	}
	msg := ring.Problems.Error()
	for _, want := range []string{"dkim[1]", "dkim[2]", "dkim[3]", "dkim[4]", "512 bits"} {
		if !strings.Contains(msg, want) {
			t.Errorf("problems %q do not name %s", msg, want)
		}
	}
	if strings.Contains(msg, "c2VjcmV0") || strings.Contains(msg, "\r\n") {
		t.Errorf("problems quote key material or a raw selector: %q", msg)
	}
}

// TestUnsignableHeader: a message go-msgauth cannot read a header from is
// reported by Close, never half signed.
func TestUnsignableHeader(t *testing.T) {
	k, _ := rsa.GenerateKey(rand.Reader, 1024)
	ring := Parse([]wire.DKIMKey{{Domain: "acme.example", Selector: "s", PrivateKey: keyPEM(t, k)}})
	s, err := NewSigner(ring.For("acme.example"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("From: a@acme.example\r\nno colon here and no end"))
	if fields, err := s.Close(); err == nil {
		t.Fatalf("signed a message without a header's end: %q", fields)
	}
}

// countingKey counts the signatures a key makes.
type countingKey struct {
	crypto.Signer
	n *atomic.Int64
}

func (c countingKey) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	c.n.Add(1)
	return c.Signer.Sign(r, digest, opts)
}

// TestAbortSignsNothing: a message aborted (over budget, say) costs no
// signature: a client sending message after message over its budget does
// not make the relay spend an RSA signature on each.
func TestAbortSignsNothing(t *testing.T) {
	k, _ := rsa.GenerateKey(rand.Reader, 1024)
	var n atomic.Int64
	keys := []Key{{Domain: "acme.example", Selector: "s", Signer: countingKey{k, &n}}}
	s, err := NewSigner(keys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte(message))
	s.Abort()
	if n.Load() != 0 {
		t.Fatalf("%d signatures made for an aborted message", n.Load())
	}
	s, _ = NewSigner(keys, time.Now())
	s.Write([]byte(message))
	if _, err := s.Close(); err != nil || n.Load() != 1 {
		t.Fatalf("a committed message: %v, %d signatures", err, n.Load())
	}
}
