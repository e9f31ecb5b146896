package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/mailfleet/mailfleet/relay/httpapi"
)

// proxyClient is a client whose connections start with a PROXY v1
// header naming client, as a load balancer's do; an empty client sends
// none.
func (r *relay) proxyClient(client string) *http.Client {
	c := r.client()
	c.Transport.(*http.Transport).DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil || client == "" {
			return conn, err
		}
		if _, err := fmt.Fprintf(conn, "PROXY TCP4 %s 192.0.2.1 40000 8443\r\n", client); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	}
	return c
}

func (r *relay) sendVia(c *http.Client) (*http.Response, error) {
	body, _ := json.Marshal(valid())
	req, _ := http.NewRequest(http.MethodPost, r.url("/v1/mail/send"), strings.NewReader(string(body)))
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(userCorp, r.keys[userCorp])
	return c.Do(req)
}

// TestProxyProtocol: behind a load balancer that sends the PROXY
// protocol, a message is recorded as coming from the client the header
// names (the throttles, the logs and the Received header use it), not
// from the balancer.
func TestProxyProtocol(t *testing.T) {
	r := startRelay(t, withAPI(func(o *httpapi.Options) { o.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")} }))
	resp, err := r.sendVia(r.proxyClient("203.0.113.7"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for _, m := range r.stored() {
		if !strings.HasPrefix(m.Env.RemoteAddr, "203.0.113.7:") {
			t.Fatalf("the message is recorded from %s, not the client the PROXY header names", m.Env.RemoteAddr)
		}
	}
	// A trusted balancer must send the header: without one the
	// connection is closed, never guessed at.
	if resp, err := r.sendVia(r.proxyClient("")); err == nil {
		resp.Body.Close()
		t.Fatalf("a connection without a PROXY header was served: %d", resp.StatusCode)
	}
}

// Attack: a client that reaches the API's port directly, not through the
// balancer, sends a PROXY header claiming another address, to step around
// the failed-login throttle or to be logged as someone else. Only peers
// in the trusted ranges may send one; this connection is closed before
// TLS, and the listener goes on serving.
func TestAttackProxyHeaderFromUntrustedPeer(t *testing.T) {
	r := startRelay(t, withAPI(func(o *httpapi.Options) { o.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")} }))
	for range 2 {
		if resp, err := r.sendVia(r.proxyClient("203.0.113.7")); err == nil {
			resp.Body.Close()
			t.Fatalf("a PROXY header from an untrusted peer was served: %d", resp.StatusCode)
		}
	}
	if n := refusedConnections(t, r, "proxy_untrusted"); n != 2 {
		t.Fatalf("%v connections counted as proxy_untrusted, want 2", n)
	}
	if len(r.stored()) != 0 {
		t.Fatal("a message was queued")
	}
}

func refusedConnections(t *testing.T, r *relay, reason string) float64 {
	t.Helper()
	families, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "mailfleet_api_connections_refused_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			if m.GetLabel()[0].GetValue() == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
