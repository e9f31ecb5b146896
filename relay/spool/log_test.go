package spool

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
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

func openTestLog(t testing.TB, path string) *Log {
	t.Helper()
	l, err := OpenLog(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// openLogged opens a spool whose log lines land in the returned buffer.
func openLogged(t testing.TB, path string) (*Log, *lockedBuffer) {
	t.Helper()
	logs := &lockedBuffer{}
	l, err := OpenLog(path, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, logs
}

// lockedBuffer collects log lines written from the committer goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// events returns the log lines whose msg is msg, decoded.
func (b *lockedBuffer) events(t testing.TB, msg string) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for line := range strings.Lines(b.b.String()) {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		if ev["msg"] == msg {
			out = append(out, ev)
		}
	}
	return out
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

// recipients returns n distinct addresses, for envelopes of a given size.
func recipients(n int) []string {
	to := make([]string, n)
	for i := range to {
		to[i] = fmt.Sprintf("r%015d@x.example", i)
	}
	return to
}

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

func readMessage(t testing.TB, l *Log, id string) (Envelope, []byte) {
	t.Helper()
	env, r, err := l.Open(id)
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

func dirNames(t testing.TB, path string) []string {
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

func pending(t testing.TB, l *Log) []string {
	t.Helper()
	ids, err := l.Pending()
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// segmentFile is the path of segment seq's file with the given extension.
func segmentFile(path string, seq uint64, ext string) string {
	return filepath.Join(path, segmentsDir, segmentName(seq, ext))
}

func TestLogRoundTrip(t *testing.T) {
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
		{"header-like body", envelope("m-json"), append([]byte("MFL\x01{\"id\":\"evil\"}\n\n"), make([]byte, 64)...)},
		{"just under the spill size", envelope("m-under"), randomBytes(spillAt-headerSize-400, 3)},
		{"just over the spill size", envelope("m-over"), randomBytes(spillAt+1, 4)},
		{"16 MB, spilled", envelope("m-16mb"), randomBytes(16_000_000, 2)},
		{"2 MiB envelope, spilled", envelope("m-big-env", withTo(recipients(80_000)...)), []byte("many recipients")},
	}
	path := t.TempDir()
	l := openTestLog(t, path)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			commit(t, l, tt.env, tt.body)
			env, body := readMessage(t, l, tt.env.ID)
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
	if got := pending(t, l); !slices.Equal(got, want) {
		t.Errorf("Pending = %q, want %q", got, want)
	}
	if names := dirNames(t, filepath.Join(path, tmpDir)); len(names) > 0 {
		t.Errorf("tmp/ = %q after committing: spill files left behind", names)
	}

	// The same bytes come back from disk, not only from the index.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openTestLog(t, path)
	for _, tt := range tests {
		env, body := readMessage(t, l, tt.env.ID)
		sameEnvelope(t, env, tt.env)
		if !bytes.Equal(body, tt.body) {
			t.Errorf("%s after reopening: got %d bytes, want %d", tt.name, len(body), len(tt.body))
		}
	}
}

// A session's memory stays bounded however large its message: past spillAt
// the body streams to tmp/.
func TestWriterSpillsLargeBodies(t *testing.T) {
	tests := []struct {
		name string
		env  Envelope
	}{
		{"small envelope", envelope("m1")},
		{"2 MiB envelope", envelope("m1", withTo(recipients(80_000)...))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := t.TempDir()
			l := openTestLog(t, path)
			w, err := l.Begin(context.Background(), tt.env)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Abort()
			line := randomBytes(1000, 5)
			for i := range 16_000 {
				if n := cap(*w.(*logWriter).buf); n > spillAt {
					t.Fatalf("after %d writes the writer buffer holds %d bytes", i, n)
				}
				if _, err := w.Write(line); err != nil {
					t.Fatal(err)
				}
			}
			names := dirNames(t, filepath.Join(path, tmpDir))
			if len(names) != 1 || !strings.HasPrefix(names[0], "m1.") {
				t.Fatalf("tmp/ = %q, want one spill file for m1", names)
			}
			info, err := os.Stat(filepath.Join(path, tmpDir, names[0]))
			if err != nil {
				t.Fatal(err)
			}
			if info.Size() < 15_000_000 {
				t.Errorf("spill file holds %d bytes, want most of the 16 MB body", info.Size())
			}
		})
	}
}

func TestLogPendingSorted(t *testing.T) {
	l := openTestLog(t, t.TempDir())
	for _, id := range []string{"20260301T000003", "20260301T000001", "20260301T000002"} {
		commit(t, l, envelope(id), []byte(id))
	}
	want := []string{"20260301T000001", "20260301T000002", "20260301T000003"}
	if got := pending(t, l); !slices.Equal(got, want) {
		t.Errorf("Pending = %q, want %q", got, want)
	}
}

func TestLogAbort(t *testing.T) {
	for _, size := range []int{12, 3 * spillAt} {
		t.Run(fmt.Sprintf("%d bytes", size), func(t *testing.T) {
			path := t.TempDir()
			l := openTestLog(t, path)
			ctx := context.Background()
			w, err := l.Begin(ctx, envelope("m1"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(randomBytes(size, 1)); err != nil {
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
			if names := dirNames(t, filepath.Join(path, tmpDir)); len(names) > 0 {
				t.Errorf("tmp/ holds %q after Abort", names)
			}
			if got := pending(t, l); len(got) > 0 {
				t.Errorf("Pending = %q after Abort", got)
			}
			// Nothing reached a segment.
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if info, err := os.Stat(segmentFile(path, 1, logExt)); err != nil || info.Size() != 0 {
				t.Errorf("segment after Abort: %v, %v; want an empty file", info, err)
			}
			// The id is free again: a retry of the same message may use it.
			l = openTestLog(t, path)
			commit(t, l, envelope("m1"), []byte("retry"))
		})
	}
}

func TestAbortAfterCommitKeepsMessage(t *testing.T) {
	l := openTestLog(t, t.TempDir())
	ctx := context.Background()
	w, err := l.Begin(ctx, envelope("m1"))
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
	if _, body := readMessage(t, l, "m1"); string(body) != "body" {
		t.Errorf("body = %q", body)
	}
}

func TestCommitCanceledBeforeStart(t *testing.T) {
	path := t.TempDir()
	l := openTestLog(t, path)
	ctx, cancel := context.WithCancel(context.Background())
	w, err := l.Begin(ctx, envelope("m1"))
	if err != nil {
		t.Fatal(err)
	}
	w.Write(randomBytes(2*spillAt, 1))
	cancel()
	if err := w.Commit(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Commit = %v, want context.Canceled", err)
	}
	if names := dirNames(t, filepath.Join(path, tmpDir)); len(names) > 0 {
		t.Errorf("tmp/ holds %q after a canceled Commit", names)
	}
	if got := pending(t, l); len(got) > 0 {
		t.Errorf("Pending = %q after a canceled Commit", got)
	}
	commit(t, l, envelope("m1"), []byte("the id is free again"))
}

// Commit honours ctx while it waits; the record goes on to the segment, as
// its doc says, and at worst is delivered though not acknowledged.
func TestCommitStopsWaitingWhenContextEnds(t *testing.T) {
	l := openTestLog(t, t.TempDir())
	syncing, unblock := make(chan struct{}), make(chan struct{})
	l.sync = func(f *os.File) error {
		close(syncing)
		<-unblock
		return fdatasync(f)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w, err := l.Begin(ctx, envelope("m1"))
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("body"))
	done := make(chan error, 1)
	go func() { done <- w.Commit(ctx) }()
	<-syncing
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Commit = %v, want context.Canceled", err)
	}
	close(unblock)
	// A later commit is queued behind that batch, so once it returns the
	// first record is indexed too.
	l.sync = fdatasync
	commit(t, l, envelope("m2"), []byte("after"))
	if got := pending(t, l); !slices.Equal(got, []string{"m1", "m2"}) {
		t.Errorf("Pending = %q, want [m1 m2]", got)
	}
}

func TestBeginDuplicateID(t *testing.T) {
	l := openTestLog(t, t.TempDir())
	w, err := l.Begin(context.Background(), envelope("m1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Abort() })
	if _, err := l.Begin(context.Background(), envelope("m1")); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second Begin of m1 = %v, want fs.ErrExist", err)
	}
}

func TestCommitRefusesCommittedID(t *testing.T) {
	path := t.TempDir()
	l := openTestLog(t, path)
	commit(t, l, envelope("m1"), []byte("first, acknowledged"))
	if err := writeMessage(l, envelope("m1"), []byte("second")); !errors.Is(err, fs.ErrExist) {
		t.Errorf("committing m1 again = %v, want fs.ErrExist", err)
	}
	if _, body := readMessage(t, l, "m1"); string(body) != "first, acknowledged" {
		t.Errorf("m1 body = %q, want the first message kept", body)
	}
	// Also across a restart: the index is rebuilt from the segments.
	l.Close()
	l = openTestLog(t, path)
	if err := writeMessage(l, envelope("m1"), []byte("third")); !errors.Is(err, fs.ErrExist) {
		t.Errorf("committing m1 after reopening = %v, want fs.ErrExist", err)
	}
}

func TestBeginRefusesHugeEnvelope(t *testing.T) {
	l := openTestLog(t, t.TempDir())
	to := recipients(maxEnvelope / 20)
	if _, err := l.Begin(context.Background(), envelope("m1", withTo(to...))); !errors.Is(err, errEnvelopeTooLong) {
		t.Errorf("Begin = %v, want errEnvelopeTooLong", err)
	}
	// Well below the limit is fine, and the refused id is not held.
	commit(t, l, envelope("m1", withTo(to[:1000]...)), []byte("x"))
}

func TestOpenLogDropsUncommitted(t *testing.T) {
	path := t.TempDir()
	l, err := OpenLog(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	commit(t, l, envelope("kept"), []byte("committed"))
	w, err := l.Begin(context.Background(), envelope("left"))
	if err != nil {
		t.Fatal(err)
	}
	w.Write(randomBytes(2*spillAt, 1))
	// Simulates a crash mid-message: the writer is abandoned, not aborted.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if names := dirNames(t, filepath.Join(path, tmpDir)); len(names) != 1 {
		t.Fatalf("tmp/ = %q before reopening, want the spilled body", names)
	}

	l, logs := openLogged(t, path)
	if names := dirNames(t, filepath.Join(path, tmpDir)); len(names) > 0 {
		t.Errorf("tmp/ = %q after reopening, want empty", names)
	}
	if got := pending(t, l); !slices.Equal(got, []string{"kept"}) {
		t.Errorf("Pending = %q, want [kept]", got)
	}
	if ev := logs.events(t, "spool dropped uncommitted message body"); len(ev) != 1 {
		t.Errorf("logged %d dropped bodies, want 1", len(ev))
	}
}

func TestOpenLogRefusesFileSpool(t *testing.T) {
	path := t.TempDir()
	if err := os.MkdirAll(filepath.Join(path, "new"), 0o700); err != nil {
		t.Fatal(err)
	}
	// An empty new/ strands nothing.
	l := openTestLog(t, path)
	l.Close()
	if err := os.WriteFile(filepath.Join(path, "new", "m1"), []byte("{\"id\":\"m1\"}\nbody"), 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := OpenLog(path, slog.New(slog.DiscardHandler)); err == nil {
		l.Close()
		t.Fatal("OpenLog succeeded over a per-file spool's pending message")
	}
	if _, err := os.Stat(filepath.Join(path, "new", "m1")); err != nil {
		t.Errorf("the pending message was touched: %v", err)
	}
}

func TestLogInvalidIDs(t *testing.T) {
	path := t.TempDir()
	l := openTestLog(t, path)
	ids := []string{
		"", ".", "..", "../escape", "a/b", "/abs", `a\b`, ".hidden",
		"a b", "a\x00b", "a\nb", "caf\u00e9", "a:b", strings.Repeat("a", maxIDLen+1),
	}
	for _, id := range ids {
		t.Run(fmt.Sprintf("%q", id), func(t *testing.T) {
			if _, err := l.Begin(context.Background(), envelope(id)); !errors.Is(err, errBadID) {
				t.Errorf("Begin = %v, want errBadID", err)
			}
			if _, _, err := l.Open(id); !errors.Is(err, errBadID) {
				t.Errorf("Open = %v, want errBadID", err)
			}
			if err := l.Remove(id); !errors.Is(err, errBadID) {
				t.Errorf("Remove = %v, want errBadID", err)
			}
		})
	}
	if names := dirNames(t, filepath.Join(path, tmpDir)); len(names) > 0 {
		t.Errorf("tmp/ = %q, want empty", names)
	}
}

func TestLogValidIDs(t *testing.T) {
	path := t.TempDir()
	l := openTestLog(t, path)
	ids := []string{"a", "20260301T123045.123456789Z-0001", "A-b_c.d", "x.", strings.Repeat("z", maxIDLen)}
	for _, id := range ids {
		commit(t, l, envelope(id), []byte(id))
		if _, body := readMessage(t, l, id); string(body) != id {
			t.Errorf("%s: body = %q", id, body)
		}
	}
	// The longest id also names a spill file.
	commit(t, l, envelope(strings.Repeat("y", maxIDLen)), randomBytes(spillAt+1, 1))
	for _, id := range ids[:2] {
		if err := l.Remove(id); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	l = openTestLog(t, path)
	if got := pending(t, l); len(got) != len(ids)-2+1 {
		t.Errorf("Pending after reopening = %q", got)
	}
}

func FuzzCheckID(f *testing.F) {
	for _, seed := range []string{"a", "..", "a/b", "20260301T1-x", "a\x00", "a b", "a\n"} {
		f.Add(seed)
	}
	base := filepath.Join("spool", "mail")
	f.Fuzz(func(t *testing.T, id string) {
		if checkID(id) != nil {
			return
		}
		p := filepath.Join(base, id)
		if filepath.Dir(p) != base || filepath.Base(p) != id {
			t.Errorf("accepted id %q resolves to %q, outside %q", id, p, base)
		}
		// A .done line must read back as exactly this id.
		if got := parseDone(appendDone(nil, 7, id)); got[7] != id {
			t.Errorf("accepted id %q reads back from .done as %q", id, got[7])
		}
	})
}

func TestLogRemove(t *testing.T) {
	l := openTestLog(t, t.TempDir())
	commit(t, l, envelope("m1"), []byte("a"))
	commit(t, l, envelope("m2"), []byte("b"))
	if err := l.Remove("m1"); err != nil {
		t.Fatal(err)
	}
	if got := pending(t, l); !slices.Equal(got, []string{"m2"}) {
		t.Errorf("Pending = %q, want [m2]", got)
	}
	if err := l.Remove("m1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("second Remove = %v, want fs.ErrNotExist", err)
	}
	if _, _, err := l.Open("m1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open removed = %v, want fs.ErrNotExist", err)
	}
}

func TestReopenRecovers(t *testing.T) {
	path := t.TempDir()
	l := openTestLog(t, path)
	bodies := map[string][]byte{}
	for i := range 20 {
		id := fmt.Sprintf("m%02d", i)
		size := 100 + i*1000
		if i%7 == 3 {
			size = spillAt + i // some spilled
		}
		bodies[id] = randomBytes(size, uint64(i))
		commit(t, l, envelope(id), bodies[id])
	}
	for _, id := range []string{"m00", "m03", "m10", "m19"} {
		if err := l.Remove(id); err != nil {
			t.Fatal(err)
		}
		delete(bodies, id)
	}
	// A removed id committed again into the same segment: the .done entry
	// for the first copy must not hide the second.
	bodies["m10"] = []byte("second copy of m10")
	commit(t, l, envelope("m10"), bodies["m10"])
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l, logs := openLogged(t, path)
	var want []string
	for id := range bodies {
		want = append(want, id)
	}
	slices.Sort(want)
	if got := pending(t, l); !slices.Equal(got, want) {
		t.Fatalf("Pending after reopening = %q, want %q", got, want)
	}
	for id, body := range bodies {
		if env, got := readMessage(t, l, id); !bytes.Equal(got, body) || env.ID != id {
			t.Errorf("%s: envelope %q, %d bytes, want %d", id, env.ID, len(got), len(body))
		}
	}
	if ev := logs.events(t, "spool dropped torn tail"); len(ev) > 0 {
		t.Errorf("a clean shutdown logged a torn tail: %v", ev)
	}
	ev := logs.events(t, "spool recovered")
	if len(ev) != 1 || ev[0]["messages"] != float64(len(want)) {
		t.Errorf("recovery logged %v, want one event with %d messages", ev, len(want))
	}
	// Recovery appends to a new segment, never after the old tail.
	commit(t, l, envelope("new"), []byte("n"))
	if names := dirNames(t, filepath.Join(path, segmentsDir)); !slices.Contains(names, segmentName(2, logExt)) {
		t.Errorf("segments = %q, want a fresh segment 2", names)
	}
}

// damage describes a change to the last segment's bytes, given where each
// of its records starts and the file's size.
type damage func(t *testing.T, f *os.File, starts []int64, size int64)

func truncateTo(n func(starts []int64, size int64) int64) damage {
	return func(t *testing.T, f *os.File, starts []int64, size int64) {
		if err := f.Truncate(n(starts, size)); err != nil {
			t.Fatal(err)
		}
	}
}

func appendBytes(b []byte) damage {
	return func(t *testing.T, f *os.File, _ []int64, size int64) {
		if _, err := f.WriteAt(b, size); err != nil {
			t.Fatal(err)
		}
	}
}

func flipByte(at func(starts []int64, size int64) int64) damage {
	return func(t *testing.T, f *os.File, starts []int64, size int64) {
		var b [1]byte
		off := at(starts, size)
		if _, err := f.ReadAt(b[:], off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0x20
		if _, err := f.WriteAt(b[:], off); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTornTail damages the end of a segment the ways a crash (or the disk)
// can, and checks that reopening keeps every intact record before the
// damage, drops the rest, and says how much it dropped.
func TestTornTail(t *testing.T) {
	ids := []string{"m1", "m2", "m3", "m4"}
	last := func(starts []int64, _ int64) int64 { return starts[3] }
	tests := []struct {
		name   string
		damage damage
		kept   int   // records that survive
		extra  int64 // bytes dropped beyond the dropped records, or -1 to compute
	}{
		{"last record short by 3 bytes", truncateTo(func(_ []int64, size int64) int64 { return size - 3 }), 3, -1},
		{"cut inside the last header", truncateTo(func(s []int64, _ int64) int64 { return s[3] + 5 }), 3, -1},
		{"cut after the last header", truncateTo(func(s []int64, _ int64) int64 { return s[3] + headerSize }), 3, -1},
		{"garbage appended", appendBytes([]byte("\x00garbage\xff")), 4, 9},
		{"zeros appended", appendBytes(make([]byte, 4096)), 4, 4096},
		{"a header's worth of garbage", appendBytes([]byte("MFL\x01\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00")), 4, 16},
		{"body byte flipped in the last record", flipByte(func(_ []int64, size int64) int64 { return size - 1 }), 3, -1},
		{"envelope byte flipped in the last record", flipByte(func(s []int64, _ int64) int64 { return s[3] + headerSize + 2 }), 3, -1},
		{"CRC flipped in the last record", flipByte(func(s []int64, _ int64) int64 { return s[3] + 12 }), 3, -1},
		{"length flipped in the last record", flipByte(func(s []int64, _ int64) int64 { return s[3] + 8 }), 3, -1},
		{"magic flipped in the last record", flipByte(last), 3, -1},
		// A damaged record in the middle ends the scan: nothing after it in
		// that segment can be told from a torn batch.
		{"body byte flipped in the second record", flipByte(func(s []int64, _ int64) int64 { return s[2] - 10 }), 1, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := t.TempDir()
			l := openTestLog(t, path)
			for i, id := range ids {
				commit(t, l, envelope(id), randomBytes(3000+i, uint64(i)))
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			seg := segmentFile(path, 1, logExt)
			f, err := os.OpenFile(seg, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			info, _ := f.Stat()
			var starts []int64
			if _, err := scanRecords(f, info.Size(), func(r scanned) { starts = append(starts, r.off) }); err != nil {
				t.Fatal(err)
			}
			tt.damage(t, f, starts, info.Size())
			info, _ = f.Stat()
			f.Close()
			wantDropped := tt.extra
			if wantDropped < 0 {
				wantDropped = info.Size() - starts[tt.kept]
			}

			l, logs := openLogged(t, path)
			if got := pending(t, l); !slices.Equal(got, ids[:tt.kept]) {
				t.Fatalf("Pending = %q, want %q", got, ids[:tt.kept])
			}
			for i, id := range ids[:tt.kept] {
				if _, body := readMessage(t, l, id); !bytes.Equal(body, randomBytes(3000+i, uint64(i))) {
					t.Errorf("%s: body damaged", id)
				}
			}
			ev := logs.events(t, "spool dropped torn tail")
			if len(ev) != 1 || ev[0]["bytes_dropped"] != float64(wantDropped) {
				t.Errorf("torn tail events = %v, want one dropping %d bytes", ev, wantDropped)
			}
			// The torn segment is never appended to again.
			commit(t, l, envelope("after"), []byte("new"))
			l.Close()
			l = openTestLog(t, path)
			if got := pending(t, l); !slices.Equal(got, append([]string{"after"}, ids[:tt.kept]...)) {
				t.Errorf("Pending after a second reopening = %q", got)
			}
		})
	}
}

// TestFailedBatchNeverCommitted makes a batch's fdatasync fail after its
// record was written: the waiter gets the error, the record is never
// indexed, and it does not come back after a restart.
func TestFailedBatchNeverCommitted(t *testing.T) {
	path := t.TempDir()
	l, logs := openLogged(t, path)
	commit(t, l, envelope("before"), []byte("acknowledged"))
	errSync := errors.New("injected fdatasync failure")
	l.sync = func(*os.File) error { return errSync }
	if err := writeMessage(l, envelope("failed"), randomBytes(5000, 1)); !errors.Is(err, errSync) {
		t.Fatalf("Commit = %v, want the sync error", err)
	}
	l.sync = fdatasync
	if got := pending(t, l); !slices.Equal(got, []string{"before"}) {
		t.Errorf("Pending = %q, want [before]", got)
	}
	if ev := logs.events(t, "spool commit failed; sealing segment"); len(ev) != 1 {
		t.Errorf("logged %d failures, want 1", len(ev))
	}
	// The next batch goes to a fresh segment, and the failed id is free.
	commit(t, l, envelope("after"), []byte("acknowledged too"))
	commit(t, l, envelope("failed"), []byte("retried"))
	if _, err := os.Stat(segmentFile(path, 2, logExt)); err != nil {
		t.Errorf("no new segment after the failure: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = openTestLog(t, path)
	if got := pending(t, l); !slices.Equal(got, []string{"after", "before", "failed"}) {
		t.Errorf("Pending after reopening = %q", got)
	}
	if _, body := readMessage(t, l, "failed"); string(body) != "retried" {
		t.Errorf("failed = %q, want the retried copy only", body)
	}
}

// TestGroupCommit holds the first fdatasync until every other writer has
// queued, and checks that the committer takes them all in one batch.
func TestGroupCommit(t *testing.T) {
	const writers = 30
	l := openTestLog(t, t.TempDir())
	var mu sync.Mutex
	syncs := 0
	first, release := make(chan struct{}), make(chan struct{})
	l.sync = func(f *os.File) error {
		mu.Lock()
		syncs++
		n := syncs
		mu.Unlock()
		if n == 1 {
			close(first)
			<-release
		}
		return fdatasync(f)
	}
	var wg sync.WaitGroup
	write := func(id string) {
		if err := writeMessage(l, envelope(id), []byte(id)); err != nil {
			t.Error(err)
		}
	}
	wg.Go(func() { write("w00") })
	<-first
	for i := 1; i < writers; i++ {
		wg.Go(func() { write(fmt.Sprintf("w%02d", i)) })
	}
	// Wait, without a timed sleep, until all of them are queued.
	for {
		l.mu.Lock()
		queued := 0
		if l.next != nil {
			queued = len(l.next.recs)
		}
		l.mu.Unlock()
		if queued == writers-1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if syncs != 2 {
		t.Errorf("%d commits took %d fdatasyncs, want 2", writers, syncs)
	}
	if got := pending(t, l); len(got) != writers {
		t.Errorf("Pending has %d messages, want %d", len(got), writers)
	}
}

// TestRotation fills several segments and checks that a segment goes, .log
// and .done, once everything in it is delivered and it is no longer written.
func TestRotation(t *testing.T) {
	path := t.TempDir()
	l, logs := openLogged(t, path)
	body := randomBytes(4096, 1)
	l.segmentLimit = 3 * 4096 // rotates after every third record
	var ids []string
	for i := range 10 {
		id := fmt.Sprintf("m%02d", i)
		ids = append(ids, id)
		commit(t, l, envelope(id), body)
	}
	segs := func() []string {
		var out []string
		for _, n := range dirNames(t, filepath.Join(path, segmentsDir)) {
			out = append(out, strings.TrimLeft(n, "0"))
		}
		return out
	}
	// m00-02 in 1, m03-05 in 2, m06-08 in 3, m09 in 4, which is active.
	if got, want := segs(), []string{"1.log", "2.log", "3.log", "4.log"}; !slices.Equal(got, want) {
		t.Fatalf("segments = %q, want %q", got, want)
	}

	for _, id := range []string{"m00", "m01", "m03"} {
		if err := l.Remove(id); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := segs(), []string{"1.done", "1.log", "2.done", "2.log", "3.log", "4.log"}; !slices.Equal(got, want) {
		t.Errorf("segments = %q, want %q", got, want)
	}
	// Reading a message keeps its segment's file open while it is deleted.
	_, r, err := l.Open("m02")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Remove("m02"); err != nil {
		t.Fatal(err)
	}
	if got, want := segs(), []string{"2.done", "2.log", "3.log", "4.log"}; !slices.Equal(got, want) {
		t.Errorf("segments after delivering all of 1 = %q, want %q", got, want)
	}
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, body) {
		t.Errorf("reading m02 after its segment went: %d bytes, %v", len(got), err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("closing the last reader of a deleted segment: %v", err)
	}
	// The active segment stays even when empty of live records.
	if err := l.Remove("m09"); err != nil {
		t.Fatal(err)
	}
	if got := segs(); !slices.Contains(got, "4.log") {
		t.Errorf("segments = %q: the active segment was deleted", got)
	}
	if ev := logs.events(t, "spool deleted delivered segment"); len(ev) != 1 {
		t.Errorf("logged %d deletions, want 1", len(ev))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopening deletes 4, fully delivered, and starts 5.
	l = openTestLog(t, path)
	if got, want := segs(), []string{"2.done", "2.log", "3.log", "5.log"}; !slices.Equal(got, want) {
		t.Errorf("segments after reopening = %q, want %q", got, want)
	}
	want := []string{"m04", "m05", "m06", "m07", "m08"}
	if got := pending(t, l); !slices.Equal(got, want) {
		t.Errorf("Pending = %q, want %q", got, want)
	}
	for _, id := range want {
		if err := l.Remove(id); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := segs(), []string{"5.log"}; !slices.Equal(got, want) {
		t.Errorf("segments after delivering everything = %q, want %q", got, want)
	}
}

func TestSegmentNames(t *testing.T) {
	tests := []struct {
		name string
		seq  uint64
		ext  string
		ok   bool
	}{
		{"0000000000000001.log", 1, logExt, true},
		{"0000000000000042.done", 42, doneExt, true},
		{"9999999999999999.log", 9999999999999999, logExt, true},
		{"1.log", 0, "", false},
		{"000000000000001.log", 0, "", false},
		{"+000000000000001.log", 0, "", false},
		{"0000000000000001.tmp", 0, "", false},
		{"0000000000000001", 0, "", false},
		{"000000000000000x.log", 0, "", false},
	}
	for _, tt := range tests {
		seq, ext, ok := parseSegmentName(tt.name)
		if seq != tt.seq || ext != tt.ext || ok != tt.ok {
			t.Errorf("parseSegmentName(%q) = %d, %q, %v; want %d, %q, %v", tt.name, seq, ext, ok, tt.seq, tt.ext, tt.ok)
		}
		if tt.ok && segmentName(seq, ext) != tt.name {
			t.Errorf("segmentName(%d, %q) = %q", seq, ext, segmentName(seq, ext))
		}
	}
}

func TestParseDone(t *testing.T) {
	in := "0 m1\n17 m2\nbad line\n-5 m3\n12 ../x\n40 m4\n99 cut-by-a-cra"
	want := map[int64]string{0: "m1", 17: "m2", 40: "m4"}
	if got := parseDone([]byte(in)); !reflect.DeepEqual(got, want) {
		t.Errorf("parseDone = %v, want %v", got, want)
	}
}

func TestOpenLogLocked(t *testing.T) {
	path := t.TempDir()
	l, err := OpenLog(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if l2, err := OpenLog(path, slog.New(slog.DiscardHandler)); err == nil {
		l2.Close()
		t.Fatal("second OpenLog of a spool in use succeeded")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	openTestLog(t, path)
}

func TestLogClosed(t *testing.T) {
	path := t.TempDir()
	l, err := OpenLog(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	commit(t, l, envelope("m0"), []byte("committed"))
	ctx := context.Background()
	var writers []Writer
	for i, size := range []int{10, 2 * spillAt} {
		w, err := l.Begin(ctx, envelope(fmt.Sprintf("m%d", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		w.Write(randomBytes(size, 1))
		writers = append(writers, w)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, w := range writers {
		if err := w.Commit(ctx); !errors.Is(err, ErrClosed) {
			t.Errorf("Commit after Close = %v, want ErrClosed", err)
		}
	}
	if names := dirNames(t, filepath.Join(path, tmpDir)); len(names) > 0 {
		t.Errorf("tmp/ = %q: a refused Commit left its body", names)
	}
	if _, err := l.Begin(ctx, envelope("m3")); !errors.Is(err, ErrClosed) {
		t.Errorf("Begin after Close = %v, want ErrClosed", err)
	}
	if _, err := l.Pending(); !errors.Is(err, ErrClosed) {
		t.Errorf("Pending after Close = %v, want ErrClosed", err)
	}
	if _, _, err := l.Open("m0"); !errors.Is(err, ErrClosed) {
		t.Errorf("Open after Close = %v, want ErrClosed", err)
	}
	if err := l.Remove("m0"); !errors.Is(err, ErrClosed) {
		t.Errorf("Remove after Close = %v, want ErrClosed", err)
	}
	l = openTestLog(t, path)
	if got := pending(t, l); !slices.Equal(got, []string{"m0"}) {
		t.Errorf("Pending after reopening = %q, want [m0]", got)
	}
}

func TestLogConcurrentCommits(t *testing.T) {
	const writers, each = 50, 20
	path := t.TempDir()
	l := openTestLog(t, path)
	l.segmentLimit = 64 << 10 // rotate under load too
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for g := range writers {
		wg.Go(func() {
			for i := range each {
				id := fmt.Sprintf("w%02d-%03d", g, i)
				if err := writeMessage(l, envelope(id), []byte(strings.Repeat(id, 100))); err != nil {
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
	check := func(l *Log) {
		t.Helper()
		got := pending(t, l)
		if len(got) != writers*each {
			t.Fatalf("Pending has %d messages, want %d", len(got), writers*each)
		}
		for _, id := range got {
			env, body := readMessage(t, l, id)
			if env.ID != id || string(body) != strings.Repeat(id, 100) {
				t.Errorf("%s: envelope id %q, body %d bytes", id, env.ID, len(body))
			}
		}
	}
	check(l)
	l.Close()
	check(openTestLog(t, path))
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

// encodeRecord builds a valid record, for fuzz seeds.
func encodeRecord(env Envelope, body []byte) []byte {
	envJSON, _ := json.Marshal(env)
	h := header{envLen: uint32(len(envJSON)), bodyLen: uint32(len(body))}
	h.crc = crc32.Update(crc32.Update(0, castagnoli, envJSON), castagnoli, body)
	b := make([]byte, headerSize, h.size())
	h.put(b)
	return append(append(b, envJSON...), body...)
}

// FuzzScanRecords feeds arbitrary segment bytes to recovery: it must not
// panic or allocate past the file, and what it keeps must be whole records
// that end where it says the valid part ends.
func FuzzScanRecords(f *testing.F) {
	one := encodeRecord(envelope("m1"), []byte("body\r\n"))
	two := append(slices.Clone(one), encodeRecord(envelope("m2"), nil)...)
	for _, seed := range [][]byte{nil, one, two, two[:len(two)-1], append(slices.Clone(one), "junk"...), []byte("MFL\x01")} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var next int64
		end, err := scanRecords(bytes.NewReader(data), int64(len(data)), func(r scanned) {
			if r.off != next {
				t.Fatalf("record at %d, want %d", r.off, next)
			}
			if checkID(r.env.ID) != nil {
				t.Fatalf("kept a record with id %q", r.env.ID)
			}
			next = r.off + r.h.size()
		})
		if end != next || end > int64(len(data)) {
			t.Fatalf("valid part ends at %d; records end at %d; %d bytes", end, next, len(data))
		}
		if (err == nil) != (end == int64(len(data))) {
			t.Fatalf("err = %v with %d of %d bytes valid", err, end, len(data))
		}
	})
}
