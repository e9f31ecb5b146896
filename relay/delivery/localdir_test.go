package delivery

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/relay/spool"
)

func openSpool(t *testing.T) *spool.Log {
	t.Helper()
	d, err := spool.OpenLog(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func envelope(id string, opts ...func(*spool.Envelope)) spool.Envelope {
	env := spool.Envelope{
		ID:         id,
		APIUser:    "acme",
		From:       "billing@acme.example",
		To:         []string{"a@example.org", "b@example.org"},
		ReceivedAt: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC),
	}
	for _, o := range opts {
		o(&env)
	}
	return env
}

func withLabel(l string) func(*spool.Envelope) { return func(e *spool.Envelope) { e.LabelID = l } }
func withFrom(f string) func(*spool.Envelope)  { return func(e *spool.Envelope) { e.From = f } }

func commit(t *testing.T, d *spool.Log, env spool.Envelope, body []byte) {
	t.Helper()
	ctx := context.Background()
	w, err := d.Begin(ctx, env)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// run starts l and stops it when the test ends, checking Run's result.
func run(t *testing.T, l *LocalDir) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil after cancel", err)
		}
	})
}

// waitForFile polls for path until a deadline far beyond any poll interval
// the test uses, so a pass means the file came, not that a sleep was long.
func waitForFile(t *testing.T, path string, within time.Duration) []byte {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear within %v: %v", path, within, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func assertSpoolEmpty(t *testing.T, d *spool.Log) {
	t.Helper()
	ids, err := d.Pending()
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) > 0 {
		t.Errorf("spool still holds %q", ids)
	}
}

func waitSpoolEmpty(t *testing.T, d *spool.Log, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ids, err := d.Pending()
		if err != nil {
			t.Fatal(err)
		}
		if len(ids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("spool still holds %q after %v", ids, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{9}).Read(b)
	return b
}

func TestLocalDirDelivers(t *testing.T) {
	tests := []struct {
		name        string
		env         spool.Envelope
		body        []byte
		wantHeaders string
	}{
		{
			name:        "with label",
			env:         envelope("m1", withLabel("newsletter")),
			body:        []byte("Subject: hi\r\n\r\nhello\r\n"),
			wantHeaders: "Return-Path: <billing@acme.example>\r\nX-Mailfleet-Account: acme\r\nX-Mailfleet-Label: newsletter\r\n",
		},
		{
			name:        "without label",
			env:         envelope("m2"),
			body:        []byte("Subject: hi\r\n\r\n.\r\n"),
			wantHeaders: "Return-Path: <billing@acme.example>\r\nX-Mailfleet-Account: acme\r\n",
		},
		{
			name:        "null sender",
			env:         envelope("m3", withFrom("")),
			body:        []byte("x"),
			wantHeaders: "Return-Path: <>\r\nX-Mailfleet-Account: acme\r\n",
		},
		{
			name:        "binary body",
			env:         envelope("m4"),
			body:        randomBytes(1 << 20),
			wantHeaders: "Return-Path: <billing@acme.example>\r\nX-Mailfleet-Account: acme\r\n",
		},
		{
			name:        "empty body",
			env:         envelope("m5"),
			wantHeaders: "Return-Path: <billing@acme.example>\r\nX-Mailfleet-Account: acme\r\n",
		},
	}
	src := openSpool(t)
	for _, tt := range tests {
		commit(t, src, tt.env, tt.body)
	}
	mailDir := filepath.Join(t.TempDir(), "mail")
	l := NewLocalDir(src, mailDir, slog.New(slog.DiscardHandler))
	l.interval = 10 * time.Millisecond
	run(t, l)

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := waitForFile(t, filepath.Join(mailDir, tt.env.ID+".eml"), 10*time.Second)
			want := append([]byte(tt.wantHeaders), tt.body...)
			if !bytes.Equal(got, want) {
				t.Errorf(".eml differs: got %d bytes starting %q, want %d bytes starting %q",
					len(got), got[:min(len(got), 120)], len(want), want[:min(len(want), 120)])
			}
		})
	}
	// The .eml appears just before its message leaves the spool.
	waitSpoolEmpty(t, src, 10*time.Second)
	entries, err := os.ReadDir(mailDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(tests) {
		t.Errorf("mailDir holds %d files, want %d (no temporary files left)", len(entries), len(tests))
	}
}

func TestLocalDirKeepsExistingEML(t *testing.T) {
	src := openSpool(t)
	mailDir := t.TempDir()
	existing := filepath.Join(mailDir, "m1.eml")
	// As if an earlier run crashed after the rename, before removing m1.
	if err := os.WriteFile(existing, []byte("first delivery"), 0o600); err != nil {
		t.Fatal(err)
	}
	commit(t, src, envelope("m1"), []byte("second copy"))

	l := NewLocalDir(src, mailDir, slog.New(slog.DiscardHandler))
	l.deliverPending(context.Background())

	if got, _ := os.ReadFile(existing); string(got) != "first delivery" {
		t.Errorf("m1.eml = %q, want it untouched", got)
	}
	assertSpoolEmpty(t, src)
	if entries, _ := os.ReadDir(mailDir); len(entries) != 1 {
		t.Errorf("mailDir holds %d files, want 1", len(entries))
	}
}

func TestLocalDirNotify(t *testing.T) {
	src := openSpool(t)
	mailDir := t.TempDir()
	l := NewLocalDir(src, mailDir, slog.New(slog.DiscardHandler))
	// Polling alone would take an hour: only Notify can deliver in time.
	l.interval = time.Hour
	commit(t, src, envelope("first"), []byte("a"))
	run(t, l)
	waitForFile(t, filepath.Join(mailDir, "first.eml"), 10*time.Second)

	commit(t, src, envelope("second"), []byte("b"))
	l.Notify()
	l.Notify() // a second wake-up must not block
	waitForFile(t, filepath.Join(mailDir, "second.eml"), 10*time.Second)
}

func TestLocalDirLogsDelivery(t *testing.T) {
	src := openSpool(t)
	var logs bytes.Buffer
	l := NewLocalDir(src, t.TempDir(), slog.New(slog.NewJSONHandler(&logs, nil)))
	commit(t, src, envelope("m1", withLabel("promo")), []byte("12345"))
	l.deliverPending(context.Background())

	var got map[string]any
	if err := json.Unmarshal(logs.Bytes(), &got); err != nil {
		t.Fatalf("want one JSON log line, got %q: %v", logs.String(), err)
	}
	want := map[string]any{"msg": "message delivered", "id": "m1", "apiUser": "acme", "label": "promo",
		"recipients": 2.0, "bytes": 5.0}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("log %s = %v, want %v", k, got[k], v)
		}
	}
}

func TestTraceHeadersDropControls(t *testing.T) {
	env := envelope("m1", withFrom("a@b.example>\r\nBcc: victim@x.example"), withLabel("l\n1"))
	got := traceHeaders(env)
	want := "Return-Path: <a@b.example>Bcc: victim@x.example>\r\nX-Mailfleet-Account: acme\r\nX-Mailfleet-Label: l1\r\n"
	if got != want {
		t.Errorf("traceHeaders = %q, want %q", got, want)
	}
	if strings.Count(got, "\r\n") != 3 {
		t.Errorf("traceHeaders produced extra lines: %q", got)
	}
}

func TestLocalDirRunFailsOnBadMailDir(t *testing.T) {
	src := openSpool(t)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l := NewLocalDir(src, filepath.Join(file, "mail"), slog.New(slog.DiscardHandler))
	if err := l.Run(context.Background()); err == nil {
		t.Error("Run succeeded with a mail directory under a regular file")
	}
}
