package delivery

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/relay/spool"
)

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

// localMessage is a Message over body that counts how often it was opened.
func localMessage(env spool.Envelope, body []byte, opens *int) Message {
	return Message{Envelope: env, Size: int64(len(body)), Open: func() (io.ReadCloser, error) {
		if opens != nil {
			*opens++
		}
		return io.NopCloser(bytes.NewReader(body)), nil
	}}
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
	mailDir := filepath.Join(t.TempDir(), "mail")
	l := NewLocalDirTransport(mailDir, slog.New(slog.DiscardHandler))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := l.Deliver(ctxFor(t), localMessage(tt.env, tt.body, nil))
			if outcomes(rs) != "a@example.org=delivered b@example.org=delivered" || rs[0].Code != 250 || rs[0].Enhanced != "2.0.0" {
				t.Fatalf("%+v", rs)
			}
			got, err := os.ReadFile(filepath.Join(mailDir, tt.env.ID+".eml"))
			if err != nil {
				t.Fatal(err)
			}
			want := append([]byte(tt.wantHeaders), tt.body...)
			if !bytes.Equal(got, want) {
				t.Errorf(".eml differs: got %d bytes starting %q, want %d bytes starting %q",
					len(got), got[:min(len(got), 120)], len(want), want[:min(len(want), 120)])
			}
		})
	}
	entries, err := os.ReadDir(mailDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(tests) {
		t.Errorf("mailDir holds %d files, want %d (no temporary files left)", len(entries), len(tests))
	}
}

func TestLocalDirKeepsExistingEML(t *testing.T) {
	mailDir := t.TempDir()
	existing := filepath.Join(mailDir, "m1.eml")
	// As if an earlier try crashed after the rename, before the queue
	// acknowledged m1.
	if err := os.WriteFile(existing, []byte("first delivery"), 0o600); err != nil {
		t.Fatal(err)
	}
	opens := 0
	rs := NewLocalDirTransport(mailDir, nil).Deliver(ctxFor(t), localMessage(envelope("m1"), []byte("second copy"), &opens))
	if rs[0].Outcome != Delivered || opens != 0 {
		t.Fatalf("%+v after %d opens", rs, opens)
	}
	if got, _ := os.ReadFile(existing); string(got) != "first delivery" {
		t.Errorf("m1.eml = %q, want it untouched", got)
	}
	if entries, _ := os.ReadDir(mailDir); len(entries) != 1 {
		t.Errorf("mailDir holds %d files, want 1", len(entries))
	}
}

func TestLocalDirLogsDelivery(t *testing.T) {
	var logs bytes.Buffer
	l := NewLocalDirTransport(t.TempDir(), slog.New(slog.NewJSONHandler(&logs, nil)))
	l.Deliver(ctxFor(t), localMessage(envelope("m1", withLabel("promo")), []byte("12345"), nil))

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

func TestLocalDirDefersWhenItCannotWrite(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l := NewLocalDirTransport(filepath.Join(file, "mail"), nil)
	rs := l.Deliver(ctxFor(t), localMessage(envelope("m1"), []byte("x"), nil))
	if outcomes(rs) != "a@example.org=deferred b@example.org=deferred" || !strings.Contains(rs[0].Text, "local delivery") {
		t.Fatalf("%+v", rs)
	}
}

func TestLocalDirRefusesPathLikeIDs(t *testing.T) {
	dir := t.TempDir()
	l := NewLocalDirTransport(filepath.Join(dir, "mail"), nil)
	for _, id := range []string{"../evil", "", ".hidden", "a/b"} {
		rs := l.Deliver(ctxFor(t), localMessage(envelope(id), []byte("x"), nil))
		if rs[0].Outcome != Deferred {
			t.Fatalf("id %q: %+v", id, rs)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "evil.eml")); err == nil {
		t.Fatal("a message escaped the mail directory")
	}
}
