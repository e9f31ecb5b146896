// Package relaytest is what the tests of the relay's two doors, SMTP
// (relay/smtpd) and the HTTP API (relay/httpapi), share: accounts with
// fresh keys, the relay's certificate, the check that no key leaked, and
// the queue drained into the messages it holds.
package relaytest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/certs"
	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/queue"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// WriteAccounts gives each account a new key, writes the credentials file
// at path, and returns the keys by api_user.
func WriteAccounts(t testing.TB, path string, accounts []credentials.Account) map[string]string {
	t.Helper()
	keys := map[string]string{}
	for i := range accounts {
		key, err := wire.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		keys[accounts[i].APIUser] = key
		accounts[i].KeyDigests = []string{wire.Digest(key)}
	}
	if err := credentials.WriteFile(path, accounts); err != nil {
		t.Fatal(err)
	}
	return keys
}

// AssertNoKeyLeaked fails when any key, plain or base64 as AUTH PLAIN and
// HTTP Basic carry it, shows in the logs or the metrics.
func AssertNoKeyLeaked(t testing.TB, reg prometheus.Gatherer, logs string, keys map[string]string) {
	t.Helper()
	var metrics strings.Builder
	families, _ := reg.Gather()
	for _, f := range families {
		metrics.WriteString(f.String())
	}
	for user, key := range keys {
		for what, text := range map[string]string{"logs": logs, "metrics": metrics.String()} {
			if strings.Contains(text, key) || strings.Contains(text, base64.StdEncoding.EncodeToString([]byte(key))) {
				t.Errorf("the key of %s appears in the %s", user, what)
			}
		}
	}
}

// Certs is a self-signed certificate served through a reloader, as
// cert-manager's files are.
type Certs struct {
	TLS      *tls.Config
	CAFile   string
	Pool     *x509.CertPool
	Reloader *certs.Reloader
}

// StartCerts writes the certificate under dir and watches it until the
// test ends.
func StartCerts(t testing.TB, dir string, log *slog.Logger) Certs {
	t.Helper()
	files, err := certs.WriteSelfSigned(dir, []string{"localhost", "127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := Certs{CAFile: files.CAFile, Pool: LoadPool(t, files.CAFile)}
	c.Reloader, err = certs.NewReloader(files.CertFile, files.KeyFile, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go c.Reloader.Run(ctx)
	c.TLS = certs.ServerTLSConfig(c.Reloader.GetCertificate)
	return c
}

// LoadPool reads a CA file into a pool.
func LoadPool(t testing.TB, caFile string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no CA certificate in", caFile)
	}
	return pool
}

// Stored is a queued message: envelope and body.
type Stored struct {
	Env  spool.Envelope
	Body []byte
}

// Drain takes every message out of q into the map, by queue id: a
// committed message is in the queue's stream before its acknowledgement,
// so once Depth is 0 every acknowledged message has been seen.
//
// Depth > 0 does not promise that Next finds something at once: JetStream
// removes an acknowledged message from a work-queue stream asynchronously
// (the stream's ack queue), so for a moment after Done the stream still
// counts it; on a loaded machine that moment was long enough for a single
// 30 s Next to fail (the flake of TestAuthForms on 2026-12-04). So each
// take is short, and Depth is read again after one that finds nothing. A
// pull abandoned at that short deadline may strand a message the server
// handed out just then; a queue opened with an AckWait of a few seconds
// brings it back well within the overall 30 s.
func Drain(t testing.TB, q *queue.Queue, into map[string]Stored) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		depth, err := q.Depth(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if depth == 0 {
			// Depth can read 0 a moment after a commit returned (see
			// Queue.Settled): that was the flake of TestAuthForms and
			// TestPipelining under load, a message acknowledged with 250
			// missing from what the test read.
			settled, err := q.Settled(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if settled {
				return
			}
		}
		tctx, tcancel := context.WithTimeout(ctx, time.Second)
		p, err := q.Next(tctx)
		tcancel()
		if err != nil && ctx.Err() == nil {
			continue
		}
		if err != nil {
			t.Fatalf("take a queued message: %v (depth %d)", err, depth)
		}
		body, err := p.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(body)
		body.Close()
		if err != nil {
			t.Fatal(err)
		}
		into[p.Envelope().ID] = Stored{Env: p.Envelope(), Body: b}
		if err := p.Done(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
