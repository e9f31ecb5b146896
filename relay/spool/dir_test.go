package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func openTestDir(t testing.TB, path string) *Dir {
	t.Helper()
	d, err := OpenDir(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// envelope builds a test envelope; options set only what a test cares about.
func envelope(id string, opts ...func(*Envelope)) Envelope {
	env := Envelope{
		ID:         id,
		APIUser:    "acme",
		From:       "billing@acme.example",
		To:         []string{"a@example.org"},
		ReceivedAt: time.Date(2026, 3, 1, 12, 30, 45, 123456789, time.UTC),
	}
	for _, o := range opts {
		o(&env)
	}
	return env
}

func withLabel(l string) func(*Envelope)       { return func(e *Envelope) { e.LabelID = l } }
func withTo(to ...string) func(*Envelope)      { return func(e *Envelope) { e.To = to } }
func withReceived(t time.Time) func(*Envelope) { return func(e *Envelope) { e.ReceivedAt = t } }

// randomBytes returns reproducible bytes covering every byte value.
func randomBytes(n int, seed uint64) []byte {
	var key [32]byte
	key[0] = byte(seed)
	key[1] = byte(seed >> 8)
	b := make([]byte, n)
	rand.NewChaCha8(key).Read(b)
	return b
}

// writeMessage writes body in uneven chunks, as the SMTP server's reads would.
func writeMessage(s Spool, env Envelope, body []byte) error {
	ctx := context.Background()
	w, err := s.Begin(ctx, env)
	if err != nil {
		return err
	}
	for rest := body; len(rest) > 0; {
		n := min(len(rest), 1+len(rest)%40_000)
		if _, err := w.Write(rest[:n]); err != nil {
			return errors.Join(err, w.Abort())
		}
		rest = rest[n:]
	}
	return w.Commit(ctx)
}

func commit(t testing.TB, s Spool, env Envelope, body []byte) {
	t.Helper()
	if err := writeMessage(s, env, body); err != nil {
		t.Fatal(err)
	}
}

func readMessage(t testing.TB, d *Dir, id string) (Envelope, []byte) {
	t.Helper()
	env, r, err := d.Open(id)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	body, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return env, body
}

// sameEnvelope compares instants with Equal: JSON keeps the instant and
// offset but not the monotonic reading or the *Location pointer.
func sameEnvelope(t *testing.T, got, want Envelope) {
	t.Helper()
	if !got.ReceivedAt.Equal(want.ReceivedAt) {
		t.Errorf("ReceivedAt = %v, want %v", got.ReceivedAt, want.ReceivedAt)
	}
	got.ReceivedAt, want.ReceivedAt = time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("envelope = %+v, want %+v", got, want)
	}
}

func dirNames(t *testing.T, path string) []string {
	t.Helper()
	entries, err := os.ReadDir(path)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestDirRoundTrip(t *testing.T) {
	full := envelope("m-full", withLabel("newsletter"), withTo("a@x.example", "b@y.example", "c@z.example"),
		func(e *Envelope) { e.RemoteAddr, e.Helo, e.TLS = "203.0.113.9:41000", "mx.acme.example", true })
	tests := []struct {
		name string
		env  Envelope
		body []byte
	}{
		{"empty body", envelope("m-empty"), nil},
		{"crlf text", envelope("m-crlf"), []byte("Subject: hi\r\n\r\nline 1\r\n.line 2\r\n\r\n")},
		{"every byte value", envelope("m-binary"), randomBytes(70_000, 1)},
		{"all envelope fields", full, []byte("x\r\n")},
		{"no recipients field", envelope("m-nil-to", withTo()), []byte("y")},
		{"local time", envelope("m-local", withReceived(time.Now())), []byte("z")},
		{"header-like body", envelope("m-json"), []byte("{\"id\":\"evil\"}\n\n")},
		{"16 MB", envelope("m-16mb"), randomBytes(16_000_000, 2)},
	}
	d := openTestDir(t, t.TempDir())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			commit(t, d, tt.env, tt.body)
			env, body := readMessage(t, d, tt.env.ID)
			sameEnvelope(t, env, tt.env)
			if !bytes.Equal(body, tt.body) {
				t.Errorf("body differs: got %d bytes, want %d", len(body), len(tt.body))
			}
		})
	}
	var want []string
	for _, tt := range tests {
		want = append(want, tt.env.ID)
	}
	slices.Sort(want)
	got, err := d.Pending()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("Pending = %q, want %q", got, want)
	}
}

func TestDirPendingSorted(t *testing.T) {
	d := openTestDir(t, t.TempDir())
	for _, id := range []string{"20260301T000003", "20260301T000001", "20260301T000002"} {
		commit(t, d, envelope(id), []byte(id))
	}
	// A stray file that cannot be an id is not offered for delivery.
	if err := os.WriteFile(filepath.Join(d.path, newDir, ".stray"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := d.Pending()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"20260301T000001", "20260301T000002", "20260301T000003"}
	if !slices.Equal(got, want) {
		t.Errorf("Pending = %q, want %q", got, want)
	}
}

func TestDirAbort(t *testing.T) {
	path := t.TempDir()
	d := openTestDir(t, path)
	ctx := context.Background()
	w, err := d.Begin(ctx, envelope("m1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("partial body")); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Errorf("second Abort: %v", err)
	}
	if _, err := w.Write([]byte("more")); !errors.Is(err, errFinished) {
		t.Errorf("Write after Abort: %v, want errFinished", err)
	}
	if err := w.Commit(ctx); !errors.Is(err, errFinished) {
		t.Errorf("Commit after Abort: %v, want errFinished", err)
	}
	for _, sub := range []string{tmpDir, newDir} {
		if names := dirNames(t, filepath.Join(path, sub)); len(names) > 0 {
			t.Errorf("%s/ holds %q after Abort", sub, names)
		}
	}
	// The id is free again: a retry of the same message may use it.
	commit(t, d, envelope("m1"), []byte("retry"))
}

func TestAbortAfterCommitKeepsMessage(t *testing.T) {
	d := openTestDir(t, t.TempDir())
	ctx := context.Background()
	w, err := d.Begin(ctx, envelope("m1"))
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("body"))
	if err := w.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatalf("Abort after Commit: %v", err)
	}
	if err := w.Commit(ctx); !errors.Is(err, errFinished) {
		t.Errorf("second Commit: %v, want errFinished", err)
	}
	if _, body := readMessage(t, d, "m1"); string(body) != "body" {
		t.Errorf("body = %q", body)
	}
}

func TestCommitCanceledBeforeStart(t *testing.T) {
	path := t.TempDir()
	d := openTestDir(t, path)
	ctx, cancel := context.WithCancel(context.Background())
	w, err := d.Begin(ctx, envelope("m1"))
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("body"))
	cancel()
	if err := w.Commit(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Commit = %v, want context.Canceled", err)
	}
	for _, sub := range []string{tmpDir, newDir} {
		if names := dirNames(t, filepath.Join(path, sub)); len(names) > 0 {
			t.Errorf("%s/ holds %q after a canceled Commit", sub, names)
		}
	}
}

func TestBeginDuplicateID(t *testing.T) {
	d := openTestDir(t, t.TempDir())
	w, err := d.Begin(context.Background(), envelope("m1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Abort() })
	if _, err := d.Begin(context.Background(), envelope("m1")); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second Begin of m1 = %v, want fs.ErrExist", err)
	}
}

func TestCommitRefusesCommittedID(t *testing.T) {
	path := t.TempDir()
	d := openTestDir(t, path)
	commit(t, d, envelope("m1"), []byte("first, acknowledged"))
	if err := writeMessage(d, envelope("m1"), []byte("second")); !errors.Is(err, fs.ErrExist) {
		t.Errorf("committing m1 again = %v, want fs.ErrExist", err)
	}
	if _, body := readMessage(t, d, "m1"); string(body) != "first, acknowledged" {
		t.Errorf("m1 body = %q, want the first message kept", body)
	}
	if names := dirNames(t, filepath.Join(path, tmpDir)); len(names) > 0 {
		t.Errorf("tmp/ = %q after the refused commit", names)
	}
}

func TestBeginRefusesHugeEnvelope(t *testing.T) {
	d := openTestDir(t, t.TempDir())
	to := make([]string, maxHeader/20)
	for i := range to {
		to[i] = fmt.Sprintf("r%015d@x.example", i)
	}
	if _, err := d.Begin(context.Background(), envelope("m1", withTo(to...))); !errors.Is(err, errHeaderTooLong) {
		t.Errorf("Begin = %v, want errHeaderTooLong", err)
	}
	// Well below the limit is fine.
	commit(t, d, envelope("m2", withTo(to[:1000]...)), []byte("x"))
}

func TestOpenDirDropsUncommitted(t *testing.T) {
	path := t.TempDir()
	d, err := OpenDir(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	commit(t, d, envelope("kept"), []byte("committed"))
	w, err := d.Begin(context.Background(), envelope("left"))
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("never committed"))
	// Simulates a crash mid-message: the writer is abandoned, not aborted.
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if names := dirNames(t, filepath.Join(path, tmpDir)); !slices.Equal(names, []string{"left"}) {
		t.Fatalf("tmp/ = %q before reopening", names)
	}

	d = openTestDir(t, path)
	if names := dirNames(t, filepath.Join(path, tmpDir)); len(names) > 0 {
		t.Errorf("tmp/ = %q after reopening, want empty", names)
	}
	if got, _ := d.Pending(); !slices.Equal(got, []string{"kept"}) {
		t.Errorf("Pending = %q, want [kept]", got)
	}
}

func TestDirInvalidIDs(t *testing.T) {
	path := t.TempDir()
	d := openTestDir(t, path)
	ids := []string{
		"", ".", "..", "../escape", "a/b", "/abs", `a\b`, ".hidden",
		"a b", "a\x00b", "a\nb", "caf\u00e9", "a:b", strings.Repeat("a", maxIDLen+1),
	}
	for _, id := range ids {
		t.Run(fmt.Sprintf("%q", id), func(t *testing.T) {
			if _, err := d.Begin(context.Background(), envelope(id)); !errors.Is(err, errBadID) {
				t.Errorf("Begin = %v, want errBadID", err)
			}
			if _, _, err := d.Open(id); !errors.Is(err, errBadID) {
				t.Errorf("Open = %v, want errBadID", err)
			}
			if err := d.Remove(id); !errors.Is(err, errBadID) {
				t.Errorf("Remove = %v, want errBadID", err)
			}
		})
	}
	if names := dirNames(t, filepath.Join(path, tmpDir)); len(names) > 0 {
		t.Errorf("tmp/ = %q, want empty", names)
	}
}

func TestDirValidIDs(t *testing.T) {
	d := openTestDir(t, t.TempDir())
	for _, id := range []string{"a", "20260301T123045.123456789Z-0001", "A-b_c.d", "x.", strings.Repeat("z", maxIDLen)} {
		commit(t, d, envelope(id), []byte(id))
		if _, body := readMessage(t, d, id); string(body) != id {
			t.Errorf("%s: body = %q", id, body)
		}
	}
}

func FuzzCheckID(f *testing.F) {
	for _, seed := range []string{"a", "..", "a/b", "20260301T1-x", "a\x00"} {
		f.Add(seed)
	}
	base := filepath.Join("spool", newDir)
	f.Fuzz(func(t *testing.T, id string) {
		if checkID(id) != nil {
			return
		}
		p := filepath.Join(base, id)
		if filepath.Dir(p) != base || filepath.Base(p) != id {
			t.Errorf("accepted id %q resolves to %q, outside %q", id, p, base)
		}
	})
}

func TestDirRemove(t *testing.T) {
	d := openTestDir(t, t.TempDir())
	commit(t, d, envelope("m1"), []byte("a"))
	commit(t, d, envelope("m2"), []byte("b"))
	if err := d.Remove("m1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.Pending(); !slices.Equal(got, []string{"m2"}) {
		t.Errorf("Pending = %q, want [m2]", got)
	}
	if err := d.Remove("m1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("second Remove = %v, want fs.ErrNotExist", err)
	}
	if _, _, err := d.Open("m1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open removed = %v, want fs.ErrNotExist", err)
	}
}

func TestOpenDamagedMessage(t *testing.T) {
	d := openTestDir(t, t.TempDir())
	tests := []struct {
		name    string
		content string
	}{
		{"not json", "garbage\nbody"},
		{"no newline", `{"id":"x"}`},
		{"other id", "{\"id\":\"someone-else\"}\nbody"},
		{"header too long", `{"id":"` + strings.Repeat("a", maxHeader) + "\"}\n"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("damaged-%d", i)
			if err := os.WriteFile(d.newPath(id), []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, r, err := d.Open(id); err == nil {
				r.Close()
				t.Error("Open succeeded on a damaged message")
			}
		})
	}
}

func TestOpenDirLocked(t *testing.T) {
	path := t.TempDir()
	d, err := OpenDir(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if d2, err := OpenDir(path, slog.New(slog.DiscardHandler)); err == nil {
		d2.Close()
		t.Fatal("second OpenDir of a spool in use succeeded")
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	openTestDir(t, path)
}

func TestDirClosed(t *testing.T) {
	d, err := OpenDir(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	w, err := d.Begin(ctx, envelope("m1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := w.Commit(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Commit after Close = %v, want ErrClosed", err)
	}
	for _, sub := range []string{tmpDir, newDir} {
		if names := dirNames(t, filepath.Join(d.path, sub)); len(names) > 0 {
			t.Errorf("%s/ = %q: a refused Commit left its message", sub, names)
		}
	}
	if _, err := d.Begin(ctx, envelope("m2")); !errors.Is(err, ErrClosed) {
		t.Errorf("Begin after Close = %v, want ErrClosed", err)
	}
}

func TestDirConcurrentCommits(t *testing.T) {
	const writers, each = 50, 20
	d := openTestDir(t, t.TempDir())
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for g := range writers {
		wg.Go(func() {
			for i := range each {
				id := fmt.Sprintf("w%02d-%03d", g, i)
				err := writeMessage(d, envelope(id), []byte(id))
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got, err := d.Pending()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != writers*each {
		t.Fatalf("Pending has %d messages, want %d", len(got), writers*each)
	}
	for _, id := range got {
		env, body := readMessage(t, d, id)
		if env.ID != id || string(body) != id {
			t.Errorf("%s: envelope id %q, body %q", id, env.ID, body)
		}
	}
}

func TestSyncerConcurrentWaiters(t *testing.T) {
	dir, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := newDirSyncer(dir)
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			if err := s.sync(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	if err := s.sync(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("sync after close = %v, want ErrClosed", err)
	}
}

func TestDiscard(t *testing.T) {
	w, err := Discard{}.Begin(context.Background(), envelope("m1"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := w.Write(make([]byte, 4096))
	if n != 4096 || err != nil {
		t.Errorf("Write = %d, %v", n, err)
	}
	if got := w.(*discardWriter).n; got != 4096 {
		t.Errorf("counted %d bytes, want 4096", got)
	}
	if err := w.Commit(context.Background()); err != nil {
		t.Errorf("Commit: %v", err)
	}
}

// publishChecked is what publish falls back to where RENAME_NOREPLACE is
// missing; the Linux test machine never takes that path on its own.
func TestPublishChecked(t *testing.T) {
	dir := t.TempDir()
	from, taken, free := filepath.Join(dir, "from"), filepath.Join(dir, "taken"), filepath.Join(dir, "free")
	for _, p := range []string{from, taken} {
		if err := os.WriteFile(p, []byte(filepath.Base(p)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := publishChecked(from, taken); !errors.Is(err, fs.ErrExist) {
		t.Errorf("publishChecked onto an existing file = %v, want fs.ErrExist", err)
	}
	if b, _ := os.ReadFile(taken); string(b) != "taken" {
		t.Errorf("existing file now holds %q", b)
	}
	if err := publishChecked(from, free); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(free); string(b) != "from" {
		t.Errorf("published file holds %q, want %q", b, "from")
	}
}
