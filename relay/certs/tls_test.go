package certs

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// serveEcho runs a TLS echo server on loopback with cfg and returns its
// address; the listener and every connection handler end at cleanup.
func serveEcho(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func dial(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	conn := c.(*tls.Conn)
	t.Cleanup(func() { conn.Close() })
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	return conn, nil
}

// echo sends line through conn and checks it comes back.
func echo(t *testing.T, conn *tls.Conn, line string) {
	t.Helper()
	if _, err := io.WriteString(conn, line+"\n"); err != nil {
		t.Fatalf("write %q: %v", line, err)
	}
	got, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("read echo of %q: %v", line, err)
	}
	if got != line+"\n" {
		t.Fatalf("echo = %q, want %q", got, line)
	}
}

func peerSerial(conn *tls.Conn) string {
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
}

func poolFromFile(t *testing.T, path string) *x509.CertPool {
	t.Helper()
	pemBytes, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("no certificate in %s", path)
	}
	return pool
}

func TestRotationEndToEnd(t *testing.T) {
	dir := t.TempDir()
	files, err := WriteSelfSigned(dir, testHosts, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r, rec := newRecordingReloader(t, files.CertFile, files.KeyFile)
	run(t, r, rec)
	addr := serveEcho(t, ServerTLSConfig(r.GetCertificate))

	roots := poolFromFile(t, files.CAFile)
	// No session cache: a resumed session would not show the new leaf.
	clientCfg := &tls.Config{RootCAs: roots, ServerName: "localhost"}

	before, err := dial(t, addr, clientCfg)
	if err != nil {
		t.Fatalf("connect before rotation: %v", err)
	}
	echo(t, before, "before rotation")
	oldSerial := peerSerial(before)
	if oldSerial != r.Leaf().SerialNumber.Text(16) {
		t.Fatalf("served %s, reloader holds %s", oldSerial, r.Leaf().SerialNumber.Text(16))
	}

	rotated, err := GenerateCA("rotated CA")
	if err != nil {
		t.Fatal(err)
	}
	roots.AppendCertsFromPEM(rotated.CertPEM)
	next := issuePair(t, rotated)
	renameInto(t, files.KeyFile, next.key)
	renameInto(t, files.CertFile, next.cert)
	waitGeneration(t, r, 2)

	echo(t, before, "after rotation")
	if got := peerSerial(before); got != oldSerial {
		t.Errorf("open connection's peer serial changed to %s", got)
	}

	after, err := dial(t, addr, clientCfg)
	if err != nil {
		t.Fatalf("connect after rotation: %v", err)
	}
	echo(t, after, "new connection")
	if got := peerSerial(after); got != next.serial {
		t.Errorf("new connection got serial %s, want rotated %s", got, next.serial)
	}
}

func TestServerTLSConfigVersions(t *testing.T) {
	files, err := WriteSelfSigned(t.TempDir(), testHosts, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := newRecordingReloader(t, files.CertFile, files.KeyFile)
	addr := serveEcho(t, ServerTLSConfig(r.GetCertificate))
	roots := poolFromFile(t, files.CAFile)

	tests := []struct {
		name       string
		maxVersion uint16
		wantErr    string
	}{
		{"TLS 1.0", tls.VersionTLS10, "protocol version"},
		{"TLS 1.1", tls.VersionTLS11, "protocol version"},
		{"TLS 1.2", tls.VersionTLS12, ""},
		{"TLS 1.3", tls.VersionTLS13, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := dial(t, addr, &tls.Config{
				RootCAs:    roots,
				ServerName: "localhost",
				// Go clients refuse TLS < 1.2 unless asked explicitly.
				MinVersion: tls.VersionTLS10,
				MaxVersion: tt.maxVersion,
			})
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("handshake succeeded with version %x", conn.ConnectionState().Version)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %q, want it to mention %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			echo(t, conn, "hello")
			state := conn.ConnectionState()
			if state.Version != tt.maxVersion {
				t.Errorf("negotiated %s, want %s", tls.VersionName(state.Version), tls.VersionName(tt.maxVersion))
			}
			// The comment on ServerTLSConfig relies on a client that offers
			// AEAD suites always getting one.
			if name := tls.CipherSuiteName(state.CipherSuite); !strings.Contains(name, "GCM") && !strings.Contains(name, "CHACHA20") {
				t.Errorf("negotiated non-AEAD suite %s", name)
			}
		})
	}
}
