package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/mailfleet/mailfleet/controllers/render"
)

// TestOperatorMetricsFlags: the operator serves metrics over HTTPS behind
// the API server's authentication and authorization unless told
// --metrics-secure=false. (test/install TestChartInstall/metrics scrapes
// the running operator with and without a token against a real API server.)
func TestOperatorMetricsFlags(t *testing.T) {
	parse := func(args ...string) operatorOptions {
		t.Helper()
		// The command's own flag set, defaults included, read back into
		// the options runOperator would get.
		cmd := operatorCommand()
		var got operatorOptions
		if err := cmd.ParseFlags(args); err != nil {
			t.Fatal(err)
		}
		f := cmd.Flags()
		got.metricsSecure, _ = f.GetBool("metrics-secure")
		got.metricsCertDir, _ = f.GetString("metrics-cert-dir")
		got.metricsAddr, _ = f.GetString("metrics-bind-address")
		return got
	}
	def := metricsOptions(parse())
	if !def.SecureServing || def.FilterProvider == nil {
		t.Errorf("by default: SecureServing %v, FilterProvider set %v; want HTTPS with authentication and authorization", def.SecureServing, def.FilterProvider != nil)
	}
	if def.CertDir != "" {
		t.Errorf("by default CertDir %q: want controller-runtime's, which falls back to a certificate made in memory", def.CertDir)
	}
	plain := metricsOptions(parse("--metrics-secure=false"))
	if plain.SecureServing || plain.FilterProvider != nil {
		t.Errorf("--metrics-secure=false: SecureServing %v, FilterProvider set %v; want plain HTTP", plain.SecureServing, plain.FilterProvider != nil)
	}
	if dir := metricsOptions(parse("--metrics-cert-dir=/etc/certs")).CertDir; dir != "/etc/certs" {
		t.Errorf("--metrics-cert-dir: CertDir %q", dir)
	}
}

// TestOperatorMetricsCertDir: a --metrics-cert-dir without its key pair
// stops the operator at start, saying which file is missing, rather than
// serving a self-signed certificate the scraper would not trust.
func TestOperatorMetricsCertDir(t *testing.T) {
	dir := t.TempDir()
	err := checkMetricsCertDir(operatorOptions{metricsSecure: true, metricsCertDir: dir})
	if err == nil || !strings.Contains(err.Error(), "tls.crt") {
		t.Errorf("empty directory: %v, want an error naming tls.crt", err)
	}
	writeServingCert(t, dir, "mailfleet-operator-metrics.mailfleet-system.svc")
	if err := checkMetricsCertDir(operatorOptions{metricsSecure: true, metricsCertDir: dir}); err != nil {
		t.Errorf("with tls.crt and tls.key: %v", err)
	}
	if err := checkMetricsCertDir(operatorOptions{metricsSecure: false, metricsCertDir: dir}); err == nil {
		t.Error("--metrics-cert-dir with --metrics-secure=false: accepted, want refused")
	}
}

// TestOperatorMetricsServesCertDir runs controller-runtime's metrics server
// with the operator's options and a certificate directory, as the chart
// mounts metrics.tls.secretName: a client that trusts only the Secret's CA
// and checks the Service's DNS name completes the handshake, and without a
// bearer token gets 401 and no metrics (the authenticator needs no API
// server to refuse a request that carries no token).
func TestOperatorMetricsServesCertDir(t *testing.T) {
	dir := t.TempDir()
	const serverName = "mailfleet-operator-metrics.mailfleet-system.svc"
	caPool := writeServingCert(t, dir, serverName)
	opts := metricsOptions(operatorOptions{metricsAddr: "127.0.0.1:0", metricsSecure: true, metricsCertDir: dir})
	// No API server: the filter's clients are made but never called.
	srv, err := metricsserver.NewServer(opts, &rest.Config{Host: "https://127.0.0.1:1"}, http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("metrics server: %v", err)
		}
	})
	bound, ok := srv.(interface{ GetBindAddr() string })
	if !ok {
		t.Fatalf("%T does not tell its address", srv)
	}
	var addr string
	for deadline := time.Now().Add(10 * time.Second); addr == "" || strings.HasSuffix(addr, ":0"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the metrics server did not listen within 10 s")
		}
		addr = bound.GetBindAddr()
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: caPool, ServerName: serverName},
	}}
	resp, err := client.Get("https://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics trusting the Secret's CA as %s: %v", serverName, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /metrics without a token: %d, want 401", resp.StatusCode)
	}
}

// writeServingCert writes tls.crt and tls.key for dnsName, signed by a CA
// it makes, into dir, and returns a pool holding that CA (the Secret's
// ca.crt).
func writeServingCert(t *testing.T, dir, dnsName string) *x509.CertPool {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "metrics test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: dnsName}, DNSNames: []string{dnsName},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, block := range map[string]*pem.Block{
		"tls.crt": {Type: "CERTIFICATE", Bytes: leafDER},
		"tls.key": {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool
}

// TestOperatorAllowListFlags: the allow lists reach the controllers' render
// options; flags not given leave them nil, which allows anything.
func TestOperatorAllowListFlags(t *testing.T) {
	parse := func(args ...string) render.Options {
		t.Helper()
		cmd := operatorCommand()
		if err := cmd.ParseFlags(args); err != nil {
			t.Fatal(err)
		}
		var o operatorOptions
		f := cmd.Flags()
		o.relayImage, _ = f.GetString("relay-image")
		o.allowedImages, _ = f.GetStringSlice("relay-allowed-images")
		o.allowedIssuers, _ = f.GetStringSlice("relay-allowed-cluster-issuers")
		o.allowedHosts, _ = f.GetStringSlice("relay-allowed-hostnames")
		return o.renderOptions()
	}
	if def := parse("--relay-image=img:1"); def.AllowedImages != nil || def.AllowedClusterIssuers != nil || def.AllowedHostnames != nil {
		t.Errorf("defaults: %+v", def)
	}
	got := parse("--relay-image=img:1", "--relay-allowed-images=a/b:,c/d:2", "--relay-allowed-cluster-issuers=le",
		"--relay-allowed-hostnames=*.mail.example,smtp.example.com")
	if got.Image != "img:1" || !slices.Equal(got.AllowedImages, []string{"a/b:", "c/d:2"}) || !slices.Equal(got.AllowedClusterIssuers, []string{"le"}) ||
		!slices.Equal(got.AllowedHostnames, []string{"*.mail.example", "smtp.example.com"}) {
		t.Errorf("parsed: %+v", got)
	}
}

// TestOperatorGCPercent: the operator collects garbage at GOGC=50 unless
// $GOGC is set, which the Go runtime then obeys.
func TestOperatorGCPercent(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	if percent, set := operatorGCPercent(getenv); !set || percent != 50 {
		t.Errorf("without GOGC: %d, %v; want 50", percent, set)
	}
	env["GOGC"] = "200"
	if _, set := operatorGCPercent(getenv); set {
		t.Error("GOGC=200 is overridden")
	}
}

// TestOperatorPprofAddress: the unauthenticated pprof endpoints bind to
// loopback or not at all.
func TestOperatorPprofAddress(t *testing.T) {
	for addr, ok := range map[string]bool{
		"": true, "0": true, "127.0.0.1:6060": true, "[::1]:6060": true, "localhost:6060": true,
		":6060": false, "0.0.0.0:6060": false, "10.0.0.7:6060": false, "pprof.example:6060": false, "6060": false,
	} {
		if err := checkPprofAddress(addr); (err == nil) != ok {
			t.Errorf("%q: %v, want allowed %v", addr, err, ok)
		}
	}
}
