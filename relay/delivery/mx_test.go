package delivery

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"
)

// dnsServer is an authoritative DNS server on loopback for the test's zone.
type dnsServer struct {
	addr string
	mu   sync.Mutex
	// records by owner name (FQDN, lower case); a name absent from both
	// maps is NXDOMAIN.
	records map[string][]dns.RR
	// rcode answers a name with this code instead (SERVFAIL).
	rcode map[string]int
}

func startDNS(t *testing.T, zone ...string) *dnsServer {
	t.Helper()
	d := &dnsServer{records: map[string][]dns.RR{}, rcode: map[string]int{}}
	for _, z := range zone {
		rr, err := dns.NewRR(z)
		if err != nil {
			t.Fatalf("record %q: %v", z, err)
		}
		name := strings.ToLower(rr.Header().Name)
		d.records[name] = append(d.records[name], rr)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d.addr = pc.LocalAddr().String()
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(d.serve), NotifyStartedFunc: func() { close(started) }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ActivateAndServe()
	}()
	<-started
	t.Cleanup(func() {
		srv.Shutdown()
		<-done
	})
	return d
}

func (d *dnsServer) serve(w dns.ResponseWriter, q *dns.Msg) {
	resp := new(dns.Msg)
	resp.SetReply(q)
	resp.Authoritative = true
	name := strings.ToLower(q.Question[0].Name)
	d.mu.Lock()
	rrs, exists := d.records[name]
	rcode, special := d.rcode[name]
	d.mu.Unlock()
	switch {
	case special:
		resp.Rcode = rcode
	case !exists:
		resp.Rcode = dns.RcodeNameError
	default:
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Question[0].Qtype {
				resp.Answer = append(resp.Answer, rr)
			}
		}
	}
	w.WriteMsg(resp)
}

// mxSinks starts sinks on the given loopback addresses, all on one port,
// since direct delivery uses one port for every host.
func mxSinks(t *testing.T, ips ...string) ([]*sink, int) {
	t.Helper()
	first := startSink(t, sinkOptions{ip: ips[0], tls: true})
	sinks := []*sink{first}
	for _, ip := range ips[1:] {
		sinks = append(sinks, startSink(t, sinkOptions{ip: ip, port: strconv.Itoa(first.port()), tls: true}))
	}
	return sinks, first.port()
}

func newMXForTest(t *testing.T, d *dnsServer, port int, opts ...func(*MXConfig)) *MX {
	t.Helper()
	cfg := MXConfig{
		Hostname: "relay.mailfleet.test",
		Resolver: &DNSResolver{Servers: []string{d.addr}, Timeout: 2 * time.Second},
		Port:     port, DialTimeout: 2 * time.Second,
		// The sinks listen on loopback, a special-purpose network.
		AllowedDestinations: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	}
	for _, o := range opts {
		o(&cfg)
	}
	m, err := NewMX(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestMXPreferenceOrder(t *testing.T) {
	sinks, port := mxSinks(t, "127.0.0.2", "127.0.0.3")
	d := startDNS(t,
		"example.org. 60 IN MX 20 mx2.example.org.",
		"example.org. 60 IN MX 10 mx1.example.org.",
		"mx1.example.org. 60 IN A 127.0.0.2",
		"mx2.example.org. 60 IN A 127.0.0.3",
	)
	m := newMXForTest(t, d, port)
	rs := m.Deliver(ctxFor(t), message("m1", []byte("Subject: x\r\n\r\nhi\r\n"), "a@example.org", "b@Example.ORG"))
	if outcomes(rs) != "a@example.org=delivered b@Example.ORG=delivered" || rs[0].RemoteMTA != "mx1.example.org" {
		t.Fatalf("%+v", rs)
	}
	if n1, n2 := len(sinks[0].got()), len(sinks[1].got()); n1 != 1 || n2 != 0 {
		t.Fatalf("mx1 got %d, mx2 got %d; want the preferred one only", n1, n2)
	}
	if !sinks[0].got()[0].tls {
		t.Fatal("opportunistic STARTTLS was not used with an untrusted certificate")
	}
}

func TestMXFirstDownSecondTakes(t *testing.T) {
	// 127.0.0.4 listens on nothing: connection refused.
	sinks, port := mxSinks(t, "127.0.0.3")
	d := startDNS(t,
		"example.org. 60 IN MX 10 mx1.example.org.",
		"example.org. 60 IN MX 20 mx2.example.org.",
		"mx1.example.org. 60 IN A 127.0.0.4",
		"mx2.example.org. 60 IN A 127.0.0.3",
	)
	m := newMXForTest(t, d, port)
	rs := m.Deliver(ctxFor(t), message("m1", []byte("\r\nhi\r\n"), "a@example.org"))
	if rs[0].Outcome != Delivered || rs[0].RemoteMTA != "mx2.example.org" {
		t.Fatalf("%+v", rs)
	}
	if len(sinks[0].got()) != 1 {
		t.Fatal("second MX did not get the message")
	}
}

func TestMXSecondWhenFirstDefersAll(t *testing.T) {
	sinks, port := mxSinks(t, "127.0.0.2", "127.0.0.3")
	sinks[0].setRcptReply("a@example.org", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "greylisted"})
	d := startDNS(t,
		"example.org. 60 IN MX 10 mx1.example.org.",
		"example.org. 60 IN MX 20 mx2.example.org.",
		"mx1.example.org. 60 IN A 127.0.0.2",
		"mx2.example.org. 60 IN A 127.0.0.3",
	)
	rs := newMXForTest(t, d, port).Deliver(ctxFor(t), message("m1", []byte("\r\nhi\r\n"), "a@example.org"))
	if rs[0].Outcome != Delivered || len(sinks[1].got()) != 1 {
		t.Fatalf("%+v", rs)
	}
}

func TestMXAddressFallback(t *testing.T) {
	sinks, port := mxSinks(t, "127.0.0.2")
	d := startDNS(t, "example.org. 60 IN A 127.0.0.2")
	rs := newMXForTest(t, d, port).Deliver(ctxFor(t), message("m1", []byte("\r\nhi\r\n"), "a@example.org"))
	if rs[0].Outcome != Delivered || rs[0].RemoteMTA != "example.org" || len(sinks[0].got()) != 1 {
		t.Fatalf("%+v", rs)
	}
}

func TestMXRoutingFailures(t *testing.T) {
	d := startDNS(t,
		"nullmx.example. 60 IN MX 0 .",
		"nodata.example. 60 IN TXT \"no mail here\"",
		"dangling.example. 60 IN MX 10 gone.dangling.example.",
	)
	d.mu.Lock()
	d.rcode["servfail.example."] = dns.RcodeServerFailure
	d.mu.Unlock()
	m := newMXForTest(t, d, 25)
	cases := []struct {
		rcpt     string
		outcome  Outcome
		enhanced string
	}{
		{"a@nullmx.example", Failed, "5.1.10"},
		{"a@nxdomain.example", Failed, "5.1.2"},
		{"a@servfail.example", Deferred, "4.4.3"},
		{"a@nodata.example", Failed, "5.4.4"},
		{"a@dangling.example", Deferred, "4.4.4"},
		{"no-domain", Failed, "5.1.3"},
	}
	for _, tc := range cases {
		t.Run(tc.rcpt, func(t *testing.T) {
			rs := m.Deliver(ctxFor(t), message("m1", []byte("\r\nhi\r\n"), tc.rcpt))
			if rs[0].Outcome != tc.outcome || rs[0].Enhanced != tc.enhanced || rs[0].Code != 0 {
				t.Fatalf("%+v, want %v %s", rs[0], tc.outcome, tc.enhanced)
			}
		})
	}
}

func TestMXPerRecipientAcrossDomains(t *testing.T) {
	sinks, port := mxSinks(t, "127.0.0.2", "127.0.0.3")
	sinks[1].setRcptReply("gone@b.example", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"})
	d := startDNS(t,
		"a.example. 60 IN MX 10 mx.a.example.",
		"mx.a.example. 60 IN A 127.0.0.2",
		"b.example. 60 IN MX 10 mx.b.example.",
		"mx.b.example. 60 IN A 127.0.0.3",
	)
	rs := newMXForTest(t, d, port).Deliver(ctxFor(t), message("m1", []byte("\r\nhi\r\n"),
		"x@a.example", "gone@b.example", "y@b.example", "a@nxdomain.example"))
	want := "x@a.example=delivered gone@b.example=failed y@b.example=delivered a@nxdomain.example=failed"
	if outcomes(rs) != want {
		t.Fatalf("got %s\nwant %s", outcomes(rs), want)
	}
	// Each domain got its own copy, with only its recipients and a
	// Received header naming the single one.
	a, b := sinks[0].got(), sinks[1].got()
	if len(a) != 1 || len(b) != 1 || strings.Join(a[0].to, ",") != "x@a.example" || strings.Join(b[0].to, ",") != "y@b.example" {
		t.Fatalf("a got %+v, b got %+v", a, b)
	}
	if !strings.Contains(string(a[0].body), "for <x@a.example>") {
		t.Fatalf("Received header: %.300q", a[0].body)
	}
}

func TestMXBoundsConnectionsPerDomain(t *testing.T) {
	sinks, port := mxSinks(t, "127.0.0.2")
	d := startDNS(t, "example.org. 60 IN MX 10 mx.example.org.", "mx.example.org. 60 IN A 127.0.0.2")
	var open, most atomic.Int64
	m := newMXForTest(t, d, port, func(c *MXConfig) {
		c.MaxConnectionsPerDomain = 2
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			n := open.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			return &closeCounter{Conn: conn, open: &open}, nil
		}
	})
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() {
			rs := m.Deliver(ctxFor(t), message(fmt.Sprint("m", i), []byte("\r\nhi\r\n"), "a@example.org"))
			if rs[0].Outcome != Delivered {
				t.Errorf("message %d: %+v", i, rs[0])
			}
		})
	}
	wg.Wait()
	if n := most.Load(); n > 2 {
		t.Fatalf("%d sessions at once to one domain, limit 2", n)
	}
	if n := len(sinks[0].got()); n != 12 {
		t.Fatalf("sink got %d", n)
	}
	m.domains.mu.Lock()
	defer m.domains.mu.Unlock()
	if len(m.domains.slots) != 0 {
		t.Fatalf("%d domain limiters kept after use", len(m.domains.slots))
	}
}

// closeCounter counts a connection as closed once, however often Close is
// called.
type closeCounter struct {
	net.Conn
	open *atomic.Int64
	once sync.Once
}

func (c *closeCounter) Close() error {
	c.once.Do(func() { c.open.Add(-1) })
	return c.Conn.Close()
}
