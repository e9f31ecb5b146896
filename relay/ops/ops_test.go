package ops

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailfleet/mailfleet/relay/certs"
)

// testRegistry holds one metric the tests look for in /metrics.
func testRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "mailfleet_test_secret_total", Help: "A metric only the platform team may read."})
	c.Add(7)
	reg.MustRegister(c)
	return reg
}

// serverTLS issues a certificate for 127.0.0.1 and returns the server's
// config and a client trusting it.
func serverTLS(t *testing.T) (*tls.Config, *http.Client) {
	t.Helper()
	ca, err := certs.GenerateCA("ops test CA")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	t.Cleanup(client.CloseIdleConnections)
	return certs.ServerTLSConfig(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &pair, nil }), client
}

func writeToken(t *testing.T, path, token string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
}

func serve(t *testing.T, o Options) *Server {
	t.Helper()
	o.Registry = testRegistry()
	s, err := Serve(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// get sends GET url with the Authorization header auth (none when empty).
func get(t *testing.T, c *http.Client, url, auth string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

// TestMetricsOverTLSWithBearerToken: /metrics on its own address answers
// only over TLS and only with the token; the probes stay open in clear.
func TestMetricsOverTLSWithBearerToken(t *testing.T) {
	tlsCfg, client := serverTLS(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	writeToken(t, tokenFile, "s3cret-token\n")
	s := serve(t, Options{Addr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", TLS: tlsCfg, BearerTokenFile: tokenFile, Ready: func() bool { return true }})
	metricsURL := "https://" + s.MetricsAddr().String() + "/metrics"

	for _, auth := range []string{"", "Bearer wrong", "Bearer s3cret", "Bearer s3cret-token-and-more", "Basic czNjcmV0LXRva2Vu", "s3cret-token"} {
		code, body, h := get(t, client, metricsURL, auth)
		if code != http.StatusUnauthorized || strings.Contains(body, "mailfleet_test_secret_total") {
			t.Fatalf("Authorization %q: %d %q, want 401 without metrics", auth, code, body)
		}
		if h.Get("WWW-Authenticate") != `Bearer realm="metrics"` {
			t.Fatalf("Authorization %q: WWW-Authenticate %q", auth, h.Get("WWW-Authenticate"))
		}
	}
	for _, auth := range []string{"Bearer s3cret-token", "bearer s3cret-token"} {
		if code, body, _ := get(t, client, metricsURL, auth); code != http.StatusOK || !strings.Contains(body, "mailfleet_test_secret_total 7") {
			t.Fatalf("Authorization %q: %d %q, want 200 with the metrics", auth, code, body)
		}
	}
	// Plain HTTP to the TLS port gets no metrics.
	if code, body, _ := get(t, http.DefaultClient, "http://"+s.MetricsAddr().String()+"/metrics", "Bearer s3cret-token"); code != http.StatusBadRequest || strings.Contains(body, "mailfleet_test_secret_total") {
		t.Fatalf("clear-text scrape of the TLS port: %d %q", code, body)
	}
	// A rotated token takes effect at the next scrape.
	writeToken(t, tokenFile, "rotated-token")
	if code, _, _ := get(t, client, metricsURL, "Bearer s3cret-token"); code != http.StatusUnauthorized {
		t.Fatalf("old token after rotation: %d, want 401", code)
	}
	if code, _, _ := get(t, client, metricsURL, "Bearer rotated-token"); code != http.StatusOK {
		t.Fatalf("new token after rotation: %d, want 200", code)
	}

	probes := "http://" + s.Addr().String()
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _, _ := get(t, http.DefaultClient, probes+path, ""); code != http.StatusOK {
			t.Fatalf("%s without a token in clear: %d, want 200", path, code)
		}
	}
	// /metrics moved: the probe address does not show it at all.
	if code, body, _ := get(t, http.DefaultClient, probes+"/metrics", ""); code != http.StatusNotFound || strings.Contains(body, "mailfleet_test_secret_total") {
		t.Fatalf("/metrics on the probe address: %d %q, want 404", code, body)
	}
}

// TestTokenOnSharedAddress: with one address, the token guards /metrics
// and not the probes.
func TestTokenOnSharedAddress(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	writeToken(t, tokenFile, "shared-token")
	ready := false
	s := serve(t, Options{Addr: "127.0.0.1:0", BearerTokenFile: tokenFile, Ready: func() bool { return ready }})
	base := "http://" + s.Addr().String()
	if s.MetricsAddr().String() != s.Addr().String() {
		t.Fatalf("metrics at %s, probes at %s: want one address", s.MetricsAddr(), s.Addr())
	}
	if code, _, _ := get(t, http.DefaultClient, base+"/metrics", ""); code != http.StatusUnauthorized {
		t.Fatalf("/metrics without a token: %d, want 401", code)
	}
	if code, _, _ := get(t, http.DefaultClient, base+"/metrics", "Bearer shared-token"); code != http.StatusOK {
		t.Fatalf("/metrics with the token: %d, want 200", code)
	}
	if code, _, _ := get(t, http.DefaultClient, base+"/healthz", ""); code != http.StatusOK {
		t.Fatalf("/healthz: %d, want 200", code)
	}
	if code, _, _ := get(t, http.DefaultClient, base+"/readyz", ""); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz while not ready: %d, want 503", code)
	}
}

// TestTokenFileGoneRefusesScrapes: a token file that disappears refuses
// every scrape rather than opening /metrics.
func TestTokenFileGoneRefusesScrapes(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	writeToken(t, tokenFile, "gone-token")
	s := serve(t, Options{Addr: "127.0.0.1:0", BearerTokenFile: tokenFile})
	if err := os.Remove(tokenFile); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := get(t, http.DefaultClient, "http://"+s.Addr().String()+"/metrics", "Bearer gone-token"); code != http.StatusUnauthorized {
		t.Fatalf("scrape after the token file went: %d, want 401", code)
	}
}

func TestServeRefuses(t *testing.T) {
	tlsCfg, _ := serverTLS(t)
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	writeToken(t, empty, " \n")
	for name, o := range map[string]Options{
		"TLS on the probe address":  {Addr: "127.0.0.1:0", TLS: tlsCfg},
		"missing token file":        {Addr: "127.0.0.1:0", BearerTokenFile: filepath.Join(dir, "missing")},
		"empty token file":          {Addr: "127.0.0.1:0", BearerTokenFile: empty},
		"metrics address not valid": {Addr: "127.0.0.1:0", MetricsAddr: "not an address"},
	} {
		o.Registry = testRegistry()
		if s, err := Serve(o); err == nil {
			s.Close()
			t.Errorf("%s: served", name)
		}
	}
}
