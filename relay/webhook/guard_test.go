package webhook

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailfleet/mailfleet/api/wire"
)

// answers is a resolver whose answers a test scripts: each lookup of a
// host takes the next answer, the last one repeating.
type answers struct {
	by    map[string][][]netip.Addr
	calls atomic.Int32
}

func (a *answers) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	n := int(a.calls.Add(1)) - 1
	list := a.by[host]
	if len(list) == 0 {
		return nil, errors.New("no such host")
	}
	return list[min(n, len(list)-1)], nil
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

// TestGuardRefusesInternalAddresses: a webhook host that resolves to any
// special-purpose address is refused, one attack per kind of address;
// written as a literal too.
func TestGuardRefusesInternalAddresses(t *testing.T) {
	attacks := map[string][]netip.Addr{
		"loopback":              addrs("127.0.0.1"),
		"loopback, IPv6":        addrs("::1"),
		"private 10/8":          addrs("10.0.0.7"),
		"private 172.16/12":     addrs("172.16.3.4"),
		"private 192.168/16":    addrs("192.168.1.1"),
		"link-local, metadata":  addrs("169.254.169.254"),
		"unique local IPv6":     addrs("fd00:ec2::254"),
		"link-local IPv6":       addrs("fe80::1"),
		"unspecified":           addrs("0.0.0.0"),
		"shared (CGNAT)":        addrs("100.64.0.1"),
		"IPv4-mapped loopback":  addrs("::ffff:127.0.0.1"),
		"NAT64 to private":      addrs("64:ff9b::a00:1"),
		"public mixed with one": addrs("8.8.8.8", "10.0.0.1"),
	}
	for name, ips := range attacks {
		t.Run(name, func(t *testing.T) {
			g := &guard{resolver: &answers{by: map[string][][]netip.Addr{"hooks.example": {ips}}}}
			if _, err := g.resolve(context.Background(), "hooks.example"); !errors.Is(err, errRefused) {
				t.Errorf("resolved to %v: %v, want refused", ips, err)
			}
			if len(ips) == 1 {
				if _, err := g.resolve(context.Background(), ips[0].String()); !errors.Is(err, errRefused) {
					t.Errorf("literal %v: %v, want refused", ips[0], err)
				}
			}
		})
	}
	g := &guard{resolver: &answers{by: map[string][][]netip.Addr{"hooks.example": {addrs("8.8.8.8")}}}}
	if _, err := g.resolve(context.Background(), "hooks.example"); err != nil {
		t.Errorf("a public address: %v", err)
	}
	allowed := &guard{resolver: g.resolver, allowed: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}}
	if _, err := allowed.resolve(context.Background(), "10.20.1.1"); err != nil {
		t.Errorf("an allowed network: %v", err)
	}
}

// TestGuardWantsHTTPS: http:// is refused unless the config allows it.
func TestGuardWantsHTTPS(t *testing.T) {
	g := &guard{}
	if _, err := g.checkURL("http://hooks.example/x"); !errors.Is(err, errRefused) {
		t.Errorf("http: %v", err)
	}
	if _, err := g.checkURL("https://hooks.example/x"); err != nil {
		t.Errorf("https: %v", err)
	}
	g.allowHTTP = true
	if _, err := g.checkURL("http://hooks.example/x"); err != nil {
		t.Errorf("http allowed: %v", err)
	}
}

// TestGuardDefeatsDNSRebinding: the name answers an allowed address the
// first time and an internal one afterwards. The first POST connects to
// the address that was checked; the next connection asks again, and the
// internal answer is refused before anything is dialed.
func TestGuardDefeatsDNSRebinding(t *testing.T) {
	rcv := newReceiver(t)
	port := rcv.srv.Listener.Addr().(interface{ AddrPort() netip.AddrPort }).AddrPort().Port()
	res := &answers{by: map[string][][]netip.Addr{"rebind.example": {addrs("127.0.0.1"), addrs("10.0.0.1")}}}
	g := &guard{resolver: res, allowHTTP: true, allowed: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}
	client := g.client(2 * time.Second)
	url := "http://rebind.example:" + itoa(int(port)) + "/"
	resp, err := client.Post(url, "application/json", strings.NewReader("[]"))
	if err != nil {
		t.Fatalf("first POST: %v", err)
	}
	resp.Body.Close()
	client.Transport.(*http.Transport).CloseIdleConnections()
	_, err = client.Post(url, "application/json", strings.NewReader("[]"))
	if !errors.Is(err, errRefused) {
		t.Fatalf("POST after the rebind: %v, want refused", err)
	}
	if n := rcv.posts.Load(); n != 1 {
		t.Fatalf("%d POSTs arrived, want the first only", n)
	}
}

// TestRefusedWebhookIsNotPosted: through the dispatcher, a webhook on a
// loopback address the config does not allow gets nothing, and the
// refusals are counted.
func TestRefusedWebhookIsNotPosted(t *testing.T) {
	rcv := newReceiver(t)
	r := newRig(t, accounts{account("acme", wire.Webhook{URL: rcv.srv.URL, Secret: secret})},
		func(c *Config) { c.AllowedDestinations = nil })
	emit(r.prod, "acme", 0, 1)
	waitFor(t, "refused POSTs", func() bool { return r.posted("refused") >= 2 })
	if n := rcv.posts.Load(); n != 0 {
		t.Fatalf("%d POSTs reached a loopback endpoint", n)
	}
}

// TestEventsGivenUpAfterTheLimit: an event still failing past GiveUp is
// dropped and counted, not retried for ever.
func TestEventsGivenUpAfterTheLimit(t *testing.T) {
	rcv := newReceiver(t)
	rcv.mode.Store(down)
	r := newRig(t, accounts{account("acme", wire.Webhook{URL: rcv.srv.URL, Secret: secret})},
		func(c *Config) { c.GiveUp = time.Nanosecond })
	emit(r.prod, "acme", 0, 3)
	waitFor(t, "the events given up", func() bool { return testutil.ToFloat64(r.d.metrics.dropped) == 6 })
}
