package certs

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"net"
	"os"
	"slices"
	"testing"
	"time"
)

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func parsePEM(t *testing.T, pemBytes []byte, wantType string) []byte {
	t.Helper()
	block, rest := pem.Decode(pemBytes)
	if block == nil || block.Type != wantType || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("want exactly one %s PEM block", wantType)
	}
	return block.Bytes
}

func parseCertFile(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	cert, err := x509.ParseCertificate(parsePEM(t, readFile(t, path), "CERTIFICATE"))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestWriteSelfSigned(t *testing.T) {
	dir := t.TempDir()
	hosts := []string{"relay.example.test", "localhost", "127.0.0.1", "::1"}
	files, err := WriteSelfSigned(dir, hosts, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if files != filesIn(dir) {
		t.Errorf("files = %+v, want %+v", files, filesIn(dir))
	}

	ca := parseCertFile(t, files.CAFile)
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA: IsCA=%v KeyUsage=%b, want a CA allowed to sign certificates", ca.IsCA, ca.KeyUsage)
	}
	leaf := parseCertFile(t, files.CertFile)
	if want := []string{"relay.example.test", "localhost"}; !slices.Equal(leaf.DNSNames, want) {
		t.Errorf("DNSNames = %v, want %v", leaf.DNSNames, want)
	}
	if want := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}; !slices.EqualFunc(leaf.IPAddresses, want, net.IP.Equal) {
		t.Errorf("IPAddresses = %v, want %v", leaf.IPAddresses, want)
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
	if got := time.Until(leaf.NotAfter); got < 47*time.Hour || got > 48*time.Hour {
		t.Errorf("leaf valid for another %v, want about 48h", got)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, h := range hosts {
		_, err := leaf.Verify(x509.VerifyOptions{
			DNSName: h, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err != nil {
			t.Errorf("leaf does not verify for %s: %v", h, err)
		}
	}

	if _, err := x509.ParsePKCS8PrivateKey(parsePEM(t, readFile(t, files.KeyFile), "PRIVATE KEY")); err != nil {
		t.Errorf("key is not PKCS #8: %v", err)
	}
	info, err := os.Stat(files.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode = %o, want 600", perm)
	}
}

func TestIssueSerials(t *testing.T) {
	ca := testCA(t)
	seen := map[string]bool{ca.Cert.SerialNumber.String(): true}
	for range 5 {
		p := issuePair(t, ca)
		if seen[p.serial] {
			t.Fatalf("serial %s issued twice", p.serial)
		}
		seen[p.serial] = true
		leaf, err := x509.ParseCertificate(parsePEM(t, p.cert, "CERTIFICATE"))
		if err != nil {
			t.Fatal(err)
		}
		if n := leaf.SerialNumber; n.Sign() <= 0 || n.BitLen() > 129 {
			t.Errorf("serial %s: want positive and at most 128 bits of randomness", n)
		}
	}
}

func TestIssueRejects(t *testing.T) {
	ca := testCA(t)
	tests := []struct {
		name     string
		hosts    []string
		validFor time.Duration
	}{
		{"no hosts", nil, time.Hour},
		{"zero validity", testHosts, 0},
		{"negative validity", testHosts, -time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPEM, _, err := ca.Issue(tt.hosts, tt.validFor)
			if err == nil {
				t.Fatalf("Issue succeeded: %s", certPEM)
			}
		})
	}
}

func TestEnsureSelfSignedReuses(t *testing.T) {
	dir := t.TempDir()
	first, err := EnsureSelfSigned(dir, testHosts)
	if err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, first)

	second, err := EnsureSelfSigned(dir, []string{"localhost"}) // a subset is covered
	if err != nil {
		t.Fatal(err)
	}
	if second != first {
		t.Errorf("files = %+v, want %+v", second, first)
	}
	if after := snapshot(t, second); after != before {
		t.Error("second call rewrote files that were still usable")
	}
}

// snapshot is the content of all three files, to tell reuse from rewrite.
func snapshot(t *testing.T, f Files) [3]string {
	t.Helper()
	return [3]string{string(readFile(t, f.CAFile)), string(readFile(t, f.CertFile)), string(readFile(t, f.KeyFile))}
}

func TestEnsureSelfSignedRegenerates(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string)
		hosts   []string
	}{
		{"nothing there", func(*testing.T, string) {}, testHosts},
		{"hosts changed", ensure(testHosts), []string{"localhost", "relay.example.test"}},
		{"expires within a day", func(t *testing.T, dir string) {
			if _, err := WriteSelfSigned(dir, testHosts, 23*time.Hour); err != nil {
				t.Fatal(err)
			}
		}, testHosts},
		{"key replaced", then(ensure(testHosts), func(t *testing.T, dir string) {
			writeFile(t, filesIn(dir).KeyFile, issuePair(t, testCA(t)).key)
		}), testHosts},
		{"CA replaced", then(ensure(testHosts), func(t *testing.T, dir string) {
			writeFile(t, filesIn(dir).CAFile, testCA(t).CertPEM)
		}), testHosts},
		{"CA missing", then(ensure(testHosts), func(t *testing.T, dir string) {
			if err := os.Remove(filesIn(dir).CAFile); err != nil {
				t.Fatal(err)
			}
		}), testHosts},
		{"cert garbage", then(ensure(testHosts), func(t *testing.T, dir string) {
			writeFile(t, filesIn(dir).CertFile, []byte("garbage"))
		}), testHosts},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.prepare(t, dir)
			oldCert, _ := os.ReadFile(filesIn(dir).CertFile)

			files, err := EnsureSelfSigned(dir, tt.hosts)
			if err != nil {
				t.Fatal(err)
			}

			if bytes.Equal(readFile(t, files.CertFile), oldCert) {
				t.Fatal("certificate was reused")
			}
			if err := reusable(files, tt.hosts, time.Now()); err != nil {
				t.Errorf("regenerated files are not usable: %v", err)
			}
			if _, err := NewReloader(files.CertFile, files.KeyFile, slog.New(slog.DiscardHandler)); err != nil {
				t.Errorf("regenerated pair does not load: %v", err)
			}
		})
	}
}

func ensure(hosts []string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		if _, err := EnsureSelfSigned(dir, hosts); err != nil {
			t.Fatal(err)
		}
	}
}

func then(steps ...func(*testing.T, string)) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		for _, s := range steps {
			s(t, dir)
		}
	}
}
