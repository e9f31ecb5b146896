package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/internal/natstest"
	"github.com/mailfleet/mailfleet/relay/certs"
	"github.com/mailfleet/mailfleet/relay/credentials"
)

// TestRelayWaitsForJetStream: on a fresh install the relay pods often start
// before NATS can serve JetStream. The relay must stay up, say it is alive
// but not ready, and start serving once JetStream answers — never exit (on
// a real cluster that exit was a crash loop of two to four restarts and
// about 100 s before the first Ready).
func TestRelayWaitsForJetStream(t *testing.T) {
	dir := t.TempDir()
	key, err := wire.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	credsFile := filepath.Join(dir, "credentials.yaml")
	err = credentials.WriteFile(credsFile, []wire.Account{{APIUser: "acme", KeyDigests: []string{wire.Digest(key)}}})
	if err != nil {
		t.Fatal(err)
	}
	// A port where no NATS listens yet.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	natsPort := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	metricsAddr := freeAddr(t)

	cfgFile := filepath.Join(dir, "relay.yaml")
	// Clients log in over clear text (authRequiresTLS: false): this test is
	// about what follows AUTH, not about TLS.
	cfg := fmt.Sprintf("hostname: mx.test\nlisteners: [{name: smtp, address: '127.0.0.1:0', authRequiresTLS: false}]\ncredentialsFile: %s\n"+
		"metricsAddress: '%s'\nqueue: {nats: {url: 'nats://127.0.0.1:%d', replicas: 1}}\n"+
		"delivery: {localDir: %s}\n", credsFile, metricsAddr, natsPort, filepath.Join(dir, "out"))
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	relay := startProcess(t, "relay", "--config", cfgFile)
	relay.waitLog(t, "queue not reachable yet; not ready until it is")
	if code := getStatus(t, "http://"+metricsAddr+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d while waiting for the queue, want 200 (alive)", code)
	}
	if code := getStatus(t, "http://"+metricsAddr+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d while waiting for the queue, want 503", code)
	}
	// What the RelayNotReady alert watches.
	if v := metricValue(t, "http://"+metricsAddr+"/metrics", "mailfleet_relay_ready"); v != "0" {
		t.Fatalf("mailfleet_relay_ready = %q while waiting for the queue, want 0", v)
	}

	// JetStream arrives; the relay takes mail without having restarted.
	natstest.Run(t, &server.Options{Host: "127.0.0.1", Port: natsPort, JetStream: true,
		StoreDir: filepath.Join(dir, "nats"), NoSigs: true, NoLog: true}, 10*time.Second)
	relay.waitLog(t, "queue reachable")
	smtpAddr := relay.waitLog(t, "listening", "listener", "smtp")["address"].(string)
	deadline := time.Now().Add(10 * time.Second)
	for getStatus(t, "http://"+metricsAddr+"/readyz") != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("/readyz did not turn 200 once JetStream was up")
		}
		time.Sleep(100 * time.Millisecond)
	}

	if v := metricValue(t, "http://"+metricsAddr+"/metrics", "mailfleet_relay_ready"); v != "1" {
		t.Fatalf("mailfleet_relay_ready = %q once serving, want 1", v)
	}

	c := dialLogin(t, smtpAddr, "acme", key)
	c.expectPrefix("MAIL FROM:<me@example.com>", "250 ")
	c.expectPrefix("RCPT TO:<you@example.com>", "250 ")
	c.expectPrefix("DATA", "354 ")
	c.write("Subject: late queue\r\n\r\nhello\r\n")
	if got := c.cmd("."); !strings.HasPrefix(got, "250 ") || !strings.HasSuffix(got, "#Queued") {
		t.Fatalf("DATA reply %q, want 250 #<id>#Queued", got)
	}
	c.expectPrefix("QUIT", "221 ")
	relay.stop(t)
}

// TestRelayProtectsMetrics: the relay binary with a metrics section serves
// /metrics on its own address, over TLS with the relay's certificate and
// behind the bearer token, while the probes answer in clear without one.
func TestRelayProtectsMetrics(t *testing.T) {
	dir := t.TempDir()
	files, err := certs.WriteSelfSigned(filepath.Join(dir, "tls"), []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	credsFile, tokenFile := filepath.Join(dir, "credentials.yaml"), filepath.Join(dir, "metrics-token")
	if err := credentials.WriteFile(credsFile, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte("scrape-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	probeAddr, metricsAddr := freeAddr(t), freeAddr(t)
	cfgFile := filepath.Join(dir, "relay.yaml")
	cfg := fmt.Sprintf("hostname: mx.test\nlisteners: [{name: smtp, address: '127.0.0.1:0'}]\ncredentialsFile: %s\nspoolDir: %s\n"+
		"tls: {certFile: %s, keyFile: %s}\nmetricsAddress: '%s'\nmetrics: {address: '%s', tls: {}, bearerTokenFile: %s}\n"+
		"delivery: {localDir: %s}\n", credsFile, filepath.Join(dir, "queue"), files.CertFile, files.KeyFile,
		probeAddr, metricsAddr, tokenFile, filepath.Join(dir, "out"))
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	relay := startProcess(t, "relay", "--config", cfgFile)
	relay.waitLog(t, "relay started")
	waitHTTP(t, "http://"+probeAddr+"/readyz")
	if code := getStatus(t, "http://"+probeAddr+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz in clear = %d, want 200", code)
	}

	pem, err := os.ReadFile(files.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()
	scrape := func(token string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "https://"+metricsAddr+"/metrics", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("scrape over TLS: %v", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, token := range []string{"", "wrong-token"} {
		if code, body := scrape(token); code != http.StatusUnauthorized || strings.Contains(body, "mailfleet_relay_ready") {
			t.Fatalf("scrape with token %q: %d, want 401 without metrics", token, code)
		}
	}
	if code, body := scrape("scrape-token"); code != http.StatusOK || !strings.Contains(body, "mailfleet_relay_ready 1") {
		t.Fatalf("scrape with the token: %d %q", code, body)
	}
	if code := getStatus(t, "http://"+probeAddr+"/metrics"); code != http.StatusNotFound {
		t.Fatalf("/metrics on the probe address = %d, want 404 (it moved)", code)
	}
	relay.stop(t)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func getStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
