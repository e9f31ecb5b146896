package delivery

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/relay/smtpclient"
)

// policyServer serves an MTA-STS policy over HTTPS with a certificate of
// the test CA for mta-sts.example.org, and counts the fetches.
type policyServer struct {
	srv     *httptest.Server
	policy  atomic.Value // string
	fetches atomic.Int64
}

func startPolicyServer(t *testing.T, policy string) *policyServer {
	t.Helper()
	p := &policyServer{}
	p.policy.Store(policy)
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.fetches.Add(1)
		if r.URL.Path != "/.well-known/mta-sts.txt" || r.Host != "mta-sts.example.org" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte(p.policy.Load().(string)))
	}))
	certPEM, keyPEM, err := caFor(t).Issue([]string{"mta-sts.example.org"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	p.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	p.srv.StartTLS()
	t.Cleanup(p.srv.Close)
	return p
}

// withPolicyServer points port 443 at the policy server, trusts the test
// CA for it and for MX hosts, and honours MTA-STS.
func withPolicyServer(t *testing.T, p *policyServer) func(*MXConfig) {
	return func(c *MXConfig) {
		c.MTASTS = true
		c.MTASTSRoots, c.RootCAs = roots(t), roots(t)
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if strings.HasSuffix(addr, ":443") {
				addr = p.srv.Listener.Addr().String()
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
	}
}

// mtaSTSZone is example.org with two MX hosts: other.test (preferred)
// and sink.test, the name the sinks' certificates carry.
func mtaSTSZone(t *testing.T, extra ...string) *dnsServer {
	return startDNS(t, append([]string{
		"example.org. 60 IN MX 10 other.test.",
		"example.org. 60 IN MX 20 sink.test.",
		"other.test. 60 IN A 127.0.0.2",
		"sink.test. 60 IN A 127.0.0.3",
		`_mta-sts.example.org. 60 IN TXT "v=STSv1; id=20261205"`,
		"mta-sts.example.org. 60 IN A 127.0.0.9",
	}, extra...)...)
}

const enforceSinkOnly = "version: STSv1\nmode: enforce\nmx: sink.test\nmax_age: 86400\n"

// TestMTASTSEnforce: a policy in enforce mode sends mail only to the MX
// hosts it names, over TLS verified for the host's name, and the result
// says so; the policy is fetched once and cached while its id stays.
func TestMTASTSEnforce(t *testing.T) {
	sinks, port := mxSinks(t, "127.0.0.2", "127.0.0.3")
	p := startPolicyServer(t, enforceSinkOnly)
	m := newMXForTest(t, mtaSTSZone(t), port, withPolicyServer(t, p))
	for i := range 2 {
		rs := m.Deliver(ctxFor(t), message("m"+string(rune('0'+i)), []byte("Subject: x\r\n\r\nhi\r\n"), "a@example.org"))
		if outcomes(rs) != "a@example.org=delivered" || rs[0].RemoteMTA != "sink.test" {
			t.Fatalf("%+v", rs)
		}
		if tls := rs[0].TLS; tls == nil || tls.Policy != TLSPolicyMTASTS || !tls.Verified || !strings.HasPrefix(tls.Version, "TLSv1.") {
			t.Fatalf("TLS result %+v", rs[0].TLS)
		}
	}
	if len(sinks[0].got()) != 0 || len(sinks[1].got()) != 2 {
		t.Fatalf("other.test got %d, sink.test %d: the policy names sink.test only", len(sinks[0].got()), len(sinks[1].got()))
	}
	if n := p.fetches.Load(); n != 1 {
		t.Fatalf("policy fetched %d times, want once while its id stays", n)
	}
}

// TestMTASTSEnforceRefusesWhatItCannotProtect: with an enforce policy, an
// MX host without STARTTLS, or a policy naming none of the MX hosts,
// defers the mail; it is never sent in plain text or elsewhere.
func TestMTASTSEnforceRefusesWhatItCannotProtect(t *testing.T) {
	plain := startSink(t, sinkOptions{ip: "127.0.0.3"})
	p := startPolicyServer(t, enforceSinkOnly)
	m := newMXForTest(t, mtaSTSZone(t), plain.port(), withPolicyServer(t, p))
	rs := m.Deliver(ctxFor(t), message("m1", []byte("Subject: x\r\n\r\nhi\r\n"), "a@example.org"))
	if outcomes(rs) != "a@example.org=deferred" || len(plain.got()) != 0 {
		t.Fatalf("without STARTTLS: %+v, %d delivered", rs, len(plain.got()))
	}

	p.policy.Store("version: STSv1\nmode: enforce\nmx: mail.elsewhere.test\nmax_age: 86400\n")
	m2 := newMXForTest(t, mtaSTSZone(t), plain.port(), withPolicyServer(t, p))
	rs = m2.Deliver(ctxFor(t), message("m2", []byte("Subject: x\r\n\r\nhi\r\n"), "a@example.org"))
	if outcomes(rs) != "a@example.org=deferred" || rs[0].Enhanced != "4.7.5" || !strings.Contains(rs[0].Text, "MTA-STS") {
		t.Fatalf("no MX host the policy names: %+v", rs)
	}
}

// TestMTASTSTestingIsReported: a policy in testing mode changes nothing
// but what the result reports.
func TestMTASTSTestingIsReported(t *testing.T) {
	sinks, port := mxSinks(t, "127.0.0.2", "127.0.0.3")
	p := startPolicyServer(t, "version: STSv1\nmode: testing\nmx: sink.test\nmax_age: 86400\n")
	m := newMXForTest(t, mtaSTSZone(t), port, withPolicyServer(t, p))
	rs := m.Deliver(ctxFor(t), message("m1", []byte("Subject: x\r\n\r\nhi\r\n"), "a@example.org"))
	if outcomes(rs) != "a@example.org=delivered" || len(sinks[0].got()) != 1 || rs[0].TLS.Policy != TLSPolicyMTASTSTesting {
		t.Fatalf("%+v", rs)
	}
}

// TestAttackMTASTSPolicyHostPrivate: the policy host is named by whoever
// writes the recipient domain's DNS; one that resolves to a
// special-purpose address the relay may not reach is not fetched (the
// cluster's own services stay out of reach), and mail goes on as without
// a policy.
func TestAttackMTASTSPolicyHostPrivate(t *testing.T) {
	sinks, port := mxSinks(t, "127.0.0.2", "127.0.0.3")
	p := startPolicyServer(t, enforceSinkOnly)
	m := newMXForTest(t, mtaSTSZone(t), port, withPolicyServer(t, p), func(c *MXConfig) {
		// The MX hosts are allowed; the policy host's 127.0.0.9 is not.
		c.AllowedDestinations = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/31")}
	})
	rs := m.Deliver(ctxFor(t), message("m1", []byte("Subject: x\r\n\r\nhi\r\n"), "a@example.org"))
	if outcomes(rs) != "a@example.org=delivered" || rs[0].TLS.Policy != TLSPolicyOpportunistic || len(sinks[0].got()) != 1 {
		t.Fatalf("%+v", rs)
	}
	if n := p.fetches.Load(); n != 0 {
		t.Fatalf("the policy host on a special-purpose address was fetched %d times", n)
	}
}

// TestConfiguredTLS: a destination configured Required (TLSEncrypt) never
// gets mail in plain text, with any certificate; Verify (TLSRequired)
// wants one that verifies for the MX host. Subdomains follow their parent.
func TestConfiguredTLS(t *testing.T) {
	plain := startSink(t, sinkOptions{ip: "127.0.0.3"})
	zone := startDNS(t, "example.org. 60 IN MX 10 sink.test.", "sink.test. 60 IN A 127.0.0.3",
		"sub.example.org. 60 IN MX 10 sink.test.")
	encrypt := func(c *MXConfig) { c.TLSPolicies = map[string]smtpclient.TLSMode{"example.org": smtpclient.TLSEncrypt} }
	m := newMXForTest(t, zone, plain.port(), encrypt)
	rs := m.Deliver(ctxFor(t), message("m1", []byte("Subject: x\r\n\r\nhi\r\n"), "a@sub.example.org"))
	if outcomes(rs) != "a@sub.example.org=deferred" || len(plain.got()) != 0 {
		t.Fatalf("Required to a host without STARTTLS: %+v", rs)
	}

	secure := startSink(t, sinkOptions{ip: "127.0.0.3", tls: true})
	m = newMXForTest(t, zone, secure.port(), encrypt)
	rs = m.Deliver(ctxFor(t), message("m2", []byte("Subject: x\r\n\r\nhi\r\n"), "a@example.org"))
	if outcomes(rs) != "a@example.org=delivered" || rs[0].TLS.Policy != TLSPolicyConfigured || rs[0].TLS.Verified {
		t.Fatalf("Required with a certificate it does not trust: %+v %+v", rs, rs[0].TLS)
	}
	m = newMXForTest(t, zone, secure.port(), func(c *MXConfig) {
		c.TLSPolicies = map[string]smtpclient.TLSMode{"example.org": smtpclient.TLSRequired}
		c.RootCAs = roots(t)
	})
	rs = m.Deliver(ctxFor(t), message("m3", []byte("Subject: x\r\n\r\nhi\r\n"), "a@example.org"))
	if outcomes(rs) != "a@example.org=delivered" || !rs[0].TLS.Verified {
		t.Fatalf("Verify with a certificate for sink.test: %+v %+v", rs, rs[0].TLS)
	}
}
