package integration

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/controllers/dnscheck"
	"github.com/mailfleet/mailfleet/internal/dnstest"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

// verifyDomain creates an SmtpDomain for domain in ns, publishes the
// records its status asks for on dns, and waits until it is Verified.
func verifyDomain(t *testing.T, dns *dnstest.Server, ns, domain string) {
	t.Helper()
	d := &v1.SmtpDomain{ObjectMeta: metav1.ObjectMeta{Name: strings.ReplaceAll(domain, ".", "-"), Namespace: ns},
		Spec: v1.SmtpDomainSpec{Domain: domain, DKIM: v1.DomainDKIM{Ed25519: true}}}
	if err := env.Client.Create(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	envtestkit.Eventually(t, relayWait, func() error {
		if err := env.Get(d, ns, d.Name); err != nil {
			return err
		}
		if meta.IsStatusConditionTrue(d.Status.Conditions, v1.ConditionVerified) {
			return nil
		}
		for _, r := range d.Status.Records {
			if r.Required {
				dns.SetTXT(r.Name, r.Value)
			}
		}
		return fmt.Errorf("SmtpDomain %s not verified yet: %+v", domain, d.Status.Conditions)
	})
}

// checkDKIM verifies every DKIM signature of msg against the records dns
// publishes: with go-msgauth, and with dkimpy (Debian's python3-dkim),
// a verifier written apart from the signer.
func checkDKIM(t *testing.T, dns *dnstest.Server, msg []byte) {
	t.Helper()
	host, port, err := net.SplitHostPort(dns.Addr)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		return (&dnscheck.Servers{Addrs: []string{dns.Addr}}).LookupTXT(t.Context(), name)
	}})
	if err != nil || len(vs) != 2 {
		t.Fatalf("%d DKIM signatures (%v), want RSA and Ed25519:\n%s", len(vs), err, msg)
	}
	for _, v := range vs {
		if v.Err != nil {
			t.Errorf("go-msgauth: the signature by %s fails: %v", v.Domain, v.Err)
		}
	}
	const script = `
import sys, dkim, dns.resolver
r = dns.resolver.Resolver(configure=False)
r.nameservers = [sys.argv[1]]
r.port = int(sys.argv[2])
def txt(name, timeout=5):
    answer = r.resolve(name.decode().rstrip("."), "TXT")
    return b"".join(b"".join(rr.strings) for rr in answer)
from email.parser import BytesHeaderParser
msg = sys.stdin.buffer.read()
n = len(BytesHeaderParser().parsebytes(msg).get_all("DKIM-Signature") or [])
d = dkim.DKIM(msg)
ok = [d.verify(idx=i, dnsfunc=txt) for i in range(n)]
print(ok)
sys.exit(0 if ok and all(ok) else 1)
`
	cmd := exec.Command("/usr/bin/python3", "-c", script, host, port)
	cmd.Stdin = bytes.NewReader(msg)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "[True, True]") {
		t.Fatalf("dkimpy does not verify the message: %v\n%s", err, out)
	}
}
