package certs

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var testHosts = []string{"localhost", "127.0.0.1"}

// pair is one certificate and its key as PEM, with the serial a test
// expects to see served once the pair is in place.
type pair struct {
	cert, key []byte
	serial    string
}

func issuePair(t *testing.T, ca *CA) pair {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(testHosts, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return pair{cert: certPEM, key: keyPEM, serial: leaf.SerialNumber.Text(16)}
}

func testCA(t *testing.T) *CA {
	t.Helper()
	ca, err := GenerateCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// renameInto replaces path the way editors and certbot do: a new file,
// renamed over the old one.
func renameInto(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	writeFile(t, tmp, data)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// logRecorder keeps every log record so tests can wait for and inspect the
// lines the Reloader writes.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}

// find returns the attributes of the records at level whose attributes
// include every one of want (key -> substring of the value).
func (l *logRecorder) find(level slog.Level, want map[string]string) []map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var found []map[string]string
	for _, r := range l.recs {
		if r.Level != level {
			continue
		}
		attrs := map[string]string{"msg": r.Message}
		r.Attrs(func(a slog.Attr) bool {
			attrs[a.Key] = a.Value.String()
			return true
		})
		if matches(attrs, want) {
			found = append(found, attrs)
		}
	}
	return found
}

func matches(attrs, want map[string]string) bool {
	for k, v := range want {
		if !strings.Contains(attrs[k], v) {
			return false
		}
	}
	return true
}

func newRecordingReloader(t *testing.T, certFile, keyFile string) (*Reloader, *logRecorder) {
	t.Helper()
	rec := &logRecorder{}
	r, err := NewReloader(certFile, keyFile, slog.New(rec))
	if err != nil {
		t.Fatal(err)
	}
	return r, rec
}

// run starts r.Run, waits until it watches, and makes the test wait for it
// to return at cleanup. Waiting for the watch matters: a change made before
// it would be caught by Run's first read, not by the mechanism under test.
func run(t *testing.T, r *Reloader, rec *logRecorder) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	waitFor(t, "the watch to start", func() bool {
		return len(rec.find(slog.LevelDebug, map[string]string{"msg": "watch started"})) > 0
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitGeneration(t *testing.T, r *Reloader, want uint64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("generation %d", want), func() bool { return r.Generation() >= want })
	if got := r.Generation(); got != want {
		t.Fatalf("Generation() = %d, want %d", got, want)
	}
}

func servedSerial(t *testing.T, r *Reloader) string {
	t.Helper()
	cert, err := r.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.Text(16)
}

func TestNewReloaderErrors(t *testing.T) {
	ca := testCA(t)
	p1, p2 := issuePair(t, ca), issuePair(t, ca)
	tests := []struct {
		name    string
		cert    []byte // nil: file missing
		key     []byte
		wantErr []string // substrings; "CERT" and "KEY" stand for the paths
	}{
		{"missing cert", nil, p1.key, []string{"CERT", "no such file"}},
		{"missing key", p1.cert, nil, []string{"KEY", "no such file"}},
		{"cert not PEM", []byte("garbage"), p1.key, []string{"CERT", "certificate input"}},
		{"key not PEM", p1.cert, []byte("garbage"), []string{"KEY", "key input"}},
		{"key of another pair", p1.cert, p2.key, []string{"CERT", "KEY", "does not match"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
			if tt.cert != nil {
				writeFile(t, certFile, tt.cert)
			}
			if tt.key != nil {
				writeFile(t, keyFile, tt.key)
			}
			r, err := NewReloader(certFile, keyFile, nil)
			if err == nil {
				t.Fatalf("NewReloader succeeded with serial %s", r.Leaf().SerialNumber.Text(16))
			}
			for _, want := range tt.wantErr {
				want = strings.NewReplacer("CERT", certFile, "KEY", keyFile).Replace(want)
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func TestNewReloaderLoadsAndLogs(t *testing.T) {
	dir := t.TempDir()
	p := issuePair(t, testCA(t))
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeFile(t, certFile, p.cert)
	writeFile(t, keyFile, p.key)

	r, rec := newRecordingReloader(t, certFile, keyFile)

	if got := r.Generation(); got != 1 {
		t.Errorf("Generation() = %d, want 1", got)
	}
	if got := r.Leaf().SerialNumber.Text(16); got != p.serial {
		t.Errorf("Leaf serial = %s, want %s", got, p.serial)
	}
	if got := servedSerial(t, r); got != p.serial {
		t.Errorf("served serial = %s, want %s", got, p.serial)
	}
	logged := rec.find(slog.LevelInfo, map[string]string{
		"serial": p.serial, "dns_names": "localhost", "ip_addresses": "127.0.0.1",
		"subject_cn": "localhost", "not_after": r.Leaf().NotAfter.Format("2006-01-02"),
	})
	if len(logged) != 1 {
		t.Fatalf("want one load line with serial, names and expiry, got %v", rec.find(slog.LevelInfo, nil))
	}
	for k, v := range logged[0] {
		if strings.Contains(v, "PRIVATE KEY") || strings.Contains(v, string(p.key[30:60])) {
			t.Errorf("log attribute %s leaks the key", k)
		}
	}
}

// layout puts a pair on disk the way one kind of deployment does and returns
// the paths the relay would be configured with.
type layout func(t *testing.T, dir string, p pair) (certFile, keyFile string)

func plainLayout(t *testing.T, dir string, p pair) (string, string) {
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeFile(t, certFile, p.cert)
	writeFile(t, keyFile, p.key)
	return certFile, keyFile
}

// kubernetesLayout mimics a Secret volume: the data lives in a timestamped
// directory, ..data points at it, and the visible names point into ..data.
func kubernetesLayout(t *testing.T, dir string, p pair) (string, string) {
	writeKubernetesVersion(t, dir, "..2026_11_28_a", p)
	mustSymlink(t, "..2026_11_28_a", filepath.Join(dir, "..data"))
	for _, name := range []string{"tls.crt", "tls.key"} {
		mustSymlink(t, filepath.Join("..data", name), filepath.Join(dir, name))
	}
	return filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
}

func writeKubernetesVersion(t *testing.T, dir, version string, p pair) {
	t.Helper()
	if err := os.Mkdir(filepath.Join(dir, version), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, version, "tls.crt"), p.cert)
	writeFile(t, filepath.Join(dir, version, "tls.key"), p.key)
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// kubernetesSwap is how the kubelet publishes a renewed Secret: a new
// version directory, then one atomic rename of a symlink over ..data.
func kubernetesSwap(t *testing.T, dir string, p pair) {
	writeKubernetesVersion(t, dir, "..2026_11_28_b", p)
	mustSymlink(t, "..2026_11_28_b", filepath.Join(dir, "..data_tmp"))
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..2026_11_28_a")); err != nil {
		t.Fatal(err)
	}
}

// watchModes runs a case once relying on fsnotify alone (the poll interval
// is longer than the test) and once relying on polling alone.
var watchModes = []struct {
	name      string
	configure func(*Reloader)
}{
	{"fsnotify", func(r *Reloader) { r.PollInterval = time.Hour }},
	{"poll", func(r *Reloader) { r.pollOnly = true; r.PollInterval = 20 * time.Millisecond }},
}

func TestReloadPicksUpUpdates(t *testing.T) {
	ca := testCA(t)
	tests := []struct {
		name   string
		layout layout
		update func(t *testing.T, dir, certFile, keyFile string, p pair)
	}{
		{"write in place, key first", plainLayout, func(t *testing.T, _, certFile, keyFile string, p pair) {
			writeFile(t, keyFile, p.key)
			writeFile(t, certFile, p.cert)
		}},
		{"write in place, cert first", plainLayout, func(t *testing.T, _, certFile, keyFile string, p pair) {
			writeFile(t, certFile, p.cert)
			writeFile(t, keyFile, p.key)
		}},
		{"rename replace", plainLayout, func(t *testing.T, _, certFile, keyFile string, p pair) {
			renameInto(t, keyFile, p.key)
			renameInto(t, certFile, p.cert)
		}},
		{"kubernetes symlink swap", kubernetesLayout, func(t *testing.T, dir, _, _ string, p pair) {
			kubernetesSwap(t, dir, p)
		}},
	}
	for _, mode := range watchModes {
		for _, tt := range tests {
			t.Run(mode.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				oldPair, newPair := issuePair(t, ca), issuePair(t, ca)
				certFile, keyFile := tt.layout(t, dir, oldPair)
				r, rec := newRecordingReloader(t, certFile, keyFile)
				mode.configure(r)
				run(t, r, rec)

				tt.update(t, dir, certFile, keyFile, newPair)

				waitGeneration(t, r, 2)
				if got := servedSerial(t, r); got != newPair.serial {
					t.Errorf("served serial = %s, want new %s", got, newPair.serial)
				}
				if got := r.Leaf().SerialNumber.Text(16); got != newPair.serial {
					t.Errorf("Leaf serial = %s, want new %s", got, newPair.serial)
				}
				if len(rec.find(slog.LevelInfo, map[string]string{"serial": newPair.serial, "generation": "2"})) != 1 {
					t.Errorf("no load line for the new serial")
				}
			})
		}
	}
}

func TestHalfWrittenUpdateKeepsOldCertificate(t *testing.T) {
	ca := testCA(t)
	for _, mode := range watchModes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			oldPair, newPair := issuePair(t, ca), issuePair(t, ca)
			certFile, keyFile := plainLayout(t, dir, oldPair)
			r, rec := newRecordingReloader(t, certFile, keyFile)
			mode.configure(r)
			run(t, r, rec)

			writeFile(t, certFile, newPair.cert)
			waitFor(t, "warning about the mismatched pair", func() bool {
				return len(rec.find(slog.LevelWarn, map[string]string{"error": "does not match"})) > 0
			})
			if got := r.Generation(); got != 1 {
				t.Errorf("Generation() = %d after a half-written update, want 1", got)
			}
			if got := servedSerial(t, r); got != oldPair.serial {
				t.Errorf("served serial = %s, want old %s", got, oldPair.serial)
			}
			warn := rec.find(slog.LevelWarn, map[string]string{"error": "does not match"})[0]
			if warn["serial"] != oldPair.serial {
				t.Errorf("warning names serial %q, want the kept %s", warn["serial"], oldPair.serial)
			}

			writeFile(t, keyFile, newPair.key)
			waitGeneration(t, r, 2)
			if got := servedSerial(t, r); got != newPair.serial {
				t.Errorf("served serial = %s, want new %s", got, newPair.serial)
			}
		})
	}
}

func TestUnchangedContentIsNotReloaded(t *testing.T) {
	dir := t.TempDir()
	p := issuePair(t, testCA(t))
	certFile, keyFile := plainLayout(t, dir, p)
	r, _ := newRecordingReloader(t, certFile, keyFile)

	// Same bytes, new inode and mtime: nothing to do.
	renameInto(t, certFile, p.cert)
	r.reload()

	if got := r.Generation(); got != 1 {
		t.Errorf("Generation() = %d after rewriting identical files, want 1", got)
	}
}

func TestRunPollsWhenWatchCannotStart(t *testing.T) {
	ca := testCA(t)
	oldPair, newPair := issuePair(t, ca), issuePair(t, ca)
	dir := filepath.Join(t.TempDir(), "tls")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := plainLayout(t, dir, oldPair)
	r, rec := newRecordingReloader(t, certFile, keyFile)
	r.PollInterval = 20 * time.Millisecond
	// A directory that is gone cannot be watched.
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	run(t, r, rec)
	if len(rec.find(slog.LevelWarn, map[string]string{"msg": "polling only", "error": dir})) != 1 {
		t.Fatalf("no warning that the watch failed: %v", rec.find(slog.LevelWarn, nil))
	}
	if got := servedSerial(t, r); got != oldPair.serial {
		t.Errorf("served serial = %s while files are missing, want old %s", got, oldPair.serial)
	}

	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	plainLayout(t, dir, newPair)

	waitGeneration(t, r, 2)
	if got := servedSerial(t, r); got != newPair.serial {
		t.Errorf("served serial = %s, want new %s", got, newPair.serial)
	}
}
