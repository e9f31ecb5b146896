package submission

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/signing"
	"github.com/mailfleet/mailfleet/relay/smtpd"
)

// signerZone is the DKIM records of the "signer" account's keys.
var signerZone = map[string]string{}

func init() {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	var keys []wire.DKIMKey
	for sel, k := range map[string]any{"mf-1": rsaKey, "mf-1-ed": edKey} {
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		keys = append(keys, wire.DKIMKey{Domain: "ifaxin.com", Selector: sel,
			PrivateKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))})
		record, _ := wire.DKIMRecordValue(k.(crypto.Signer).Public())
		signerZone[wire.DKIMRecordName(sel, "ifaxin.com")] = record
	}
	ring := signing.Parse(keys)
	testAccounts["signer"] = credentials.Identity{APIUser: "signer", MaxRecipients: 3, BudgetPerMinute: 100,
		AllowedSenderDomains: []string{"ifaxin.com", "*.ifaxin.com", "other.example"}, RestrictSenders: true, CheckHeaderFrom: true, DKIM: ring}
	testAccounts["unverified"] = credentials.Identity{APIUser: "unverified", MaxRecipients: 3, BudgetPerMinute: 100,
		RestrictSenders: true, CheckHeaderFrom: true}
}

// verifyStored checks the DKIM signatures of a stored message as a
// receiver would: the fields the envelope prepends, then the body.
func verifyStored(t *testing.T, m *recorded) []*dkim.Verification {
	t.Helper()
	lookup := func(name string) ([]string, error) {
		if v, ok := signerZone[name]; ok {
			return []string{v}, nil
		}
		return nil, errors.New("NXDOMAIN")
	}
	vs, err := dkim.VerifyWithOptions(strings.NewReader(m.env.Prepend+m.body.String()), &dkim.VerifyOptions{LookupTXT: lookup})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if v.Err != nil {
			t.Errorf("%s: signature by %s fails: %v", m.env.ID, v.Domain, v.Err)
		}
	}
	return vs
}

// TestSignedAtSubmission: a message whose From is in a domain the account
// has keys for is stored with an RSA and an Ed25519 signature that verify
// against the published records, and counted.
func TestSignedAtSubmission(t *testing.T) {
	p := newPolicy(t, 0)
	msg := "From: Orders <orders@mail.ifaxin.com>\r\nTo: b@example.com\r\nSubject: Your order\r\n\r\nThanks.\r\n"
	if _, err := sendOne(t, p.session(t, "192.0.2.1", "signer"), strings.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	m := p.spool.begun[0]
	if m.body.String() != msg {
		t.Fatalf("the stored body changed: %q", m.body.String())
	}
	if vs := verifyStored(t, m); len(vs) != 2 {
		t.Fatalf("%d signatures, want RSA and Ed25519", len(vs))
	}
	if got := testutil.ToFloat64(p.metrics.signatures.WithLabelValues("signed")); got != 1 {
		t.Fatalf("signed counter %v", got)
	}
}

// TestUnsignedOutsideItsDomains: a From in an allowed domain the account
// has no key for goes out unsigned; a signature by another domain would
// not align with it.
func TestUnsignedOutsideItsDomains(t *testing.T) {
	p := newPolicy(t, 0)
	s := p.session(t, "192.0.2.1", "signer")
	if err := s.Mail("a@other.example", smtpd.MailOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Rcpt("b@example.com"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Data(t.Context(), strings.NewReader("From: a@other.example\r\n\r\nhi\r\n")); err != nil {
		t.Fatal(err)
	}
	if p.spool.begun[0].env.Prepend != "" {
		t.Fatalf("signed a message from a domain without keys: %q", p.spool.begun[0].env.Prepend)
	}
}

// TestSMTPAPICopiesSignedEach: each copy of a message with "sub" carries
// a signature of its own bytes, after its substitution.
func TestSMTPAPICopiesSignedEach(t *testing.T) {
	p := newPolicy(t, 0)
	api := b64(`{"to": ["a@example.com", "b@example.com"], "sub": {"%name%": ["Ann", "Bob"]}}`)
	if _, err := sendOne(t, p.session(t, "192.0.2.1", "signer"), strings.NewReader(withSMTPAPI(api, "Dear %name%\r\n"))); err != nil {
		t.Fatal(err)
	}
	if len(p.spool.begun) != 2 {
		t.Fatalf("%d copies", len(p.spool.begun))
	}
	for i, name := range []string{"Ann", "Bob"} {
		m := p.spool.begun[i]
		if !strings.Contains(m.body.String(), "Dear "+name) {
			t.Fatalf("copy %d: %q", i, m.body.String())
		}
		if len(verifyStored(t, m)) != 2 {
			t.Fatalf("copy %d is not signed twice", i)
		}
	}
}

// TestSignatureCoversTheSubmittedBytes: a signature stored for one copy
// does not verify another's bytes, so a body changed after signing fails.
func TestSignatureCoversTheSubmittedBytes(t *testing.T) {
	p := newPolicy(t, 0)
	if _, err := sendOne(t, p.session(t, "192.0.2.1", "signer"), strings.NewReader("From: orders@ifaxin.com\r\nSubject: a\r\n\r\npay 10\r\n")); err != nil {
		t.Fatal(err)
	}
	m := p.spool.begun[0]
	m.body.Reset()
	m.body.WriteString("From: orders@ifaxin.com\r\nSubject: a\r\n\r\npay 1000\r\n")
	lookup := func(name string) ([]string, error) { return []string{signerZone[name]}, nil }
	vs, err := dkim.VerifyWithOptions(strings.NewReader(m.env.Prepend+m.body.String()), &dkim.VerifyOptions{LookupTXT: lookup})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if v.Err == nil {
			t.Fatal("a changed body verifies")
		}
	}
}

// TestRestrictedWithoutDomains: where sender domains must be verified, an
// account none of whose domains is verified sends from none, rather than
// from any as an account without a list does.
func TestRestrictedWithoutDomains(t *testing.T) {
	p := newPolicy(t, 0)
	s := p.session(t, "192.0.2.1", "unverified")
	if got := reply(t, s.Mail("a@anything.example", smtpd.MailOptions{})); !strings.HasPrefix(got, "553 5.7.1") {
		t.Fatalf("MAIL FROM with no verified domain: %q", got)
	}
}
