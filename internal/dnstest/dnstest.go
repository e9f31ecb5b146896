// Package dnstest is a real DNS server on loopback (github.com/miekg/dns)
// serving TXT records a test sets and removes while it runs: a sender
// domain's records appear, change and vanish as they do when a tenant edits
// its zone.
package dnstest

import (
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Server answers TXT questions from its records; a name it does not hold
// is NXDOMAIN, and a name in Failing gets SERVFAIL.
type Server struct {
	// Addr is the server's "127.0.0.1:port", over UDP and TCP.
	Addr string

	mu      sync.Mutex
	txt     map[string][]string
	failing map[string]bool
	asked   map[string]int
}

// Start starts a server on 127.0.0.1 and stops it when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{txt: map[string][]string{}, failing: map[string]bool{}, asked: map[string]int{}}
	pc, ln := listen(t)
	s.Addr = pc.LocalAddr().String()
	udp := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.serve)}
	tcp := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(s.serve)}
	started := make(chan struct{}, 2)
	udp.NotifyStartedFunc = func() { started <- struct{}{} }
	tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	<-started
	<-started
	t.Cleanup(func() {
		udp.Shutdown()
		tcp.Shutdown()
	})
	return s
}

// listen binds UDP and TCP on one port of 127.0.0.1: the UDP port the
// kernel picks may be taken for TCP, so it tries a few.
func listen(t testing.TB) (net.PacketConn, net.Listener) {
	var err error
	for range 20 {
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			continue
		}
		var ln net.Listener
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			return pc, ln
		}
		pc.Close()
	}
	t.Fatalf("bind a DNS server on 127.0.0.1: %v", err)
	return nil, nil
}

func key(name string) string { return strings.ToLower(dns.Fqdn(name)) }

// SetTXT publishes records at name, replacing what it had.
func (s *Server) SetTXT(name string, records ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.txt[key(name)] = records
}

// Remove withdraws every record of name.
func (s *Server) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.txt, key(name))
}

// Fail makes questions about name fail with SERVFAIL (on) or not.
func (s *Server) Fail(name string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failing[key(name)] = on
}

// Asked is how many questions name got.
func (s *Server) Asked(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.asked[key(name)]
}

func (s *Server) serve(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	if len(q.Question) == 1 {
		s.answer(m, q.Question[0])
	}
	if w.LocalAddr().Network() == "udp" {
		// What does not fit the client's datagram is cut, and marked so:
		// the client asks again over TCP, as from a real server.
		size := dns.MinMsgSize
		if opt := q.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

func (s *Server) answer(m *dns.Msg, q dns.Question) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := strings.ToLower(q.Name)
	s.asked[name]++
	records, ok := s.txt[name]
	switch {
	case s.failing[name]:
		m.Rcode = dns.RcodeServerFailure
	case !ok:
		m.Rcode = dns.RcodeNameError
	case q.Qtype == dns.TypeTXT:
		for _, r := range records {
			m.Answer = append(m.Answer, &dns.TXT{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
				Txt: split(r),
			})
		}
	}
}

// split cuts a record into the 255-byte strings a TXT record is made of.
func split(r string) []string {
	var out []string
	for len(r) > 255 {
		out = append(out, r[:255])
		r = r[255:]
	}
	return append(out, r)
}
