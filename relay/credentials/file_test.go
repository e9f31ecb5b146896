package credentials

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// reloadDeadline bounds how long a test waits for a change to be picked up.
const reloadDeadline = 5 * time.Second

// never is a poll interval long enough that only file events can trigger a
// reload within a test.
const never = time.Hour

func TestOpenFile(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		content string // written to the file unless empty
		want    string // substring of the error
	}{
		{"missing", "", "no such file"},
		{"invalid", "accounts: [{apiUser: demo}]\n", "keyDigests: at least one required"},
		{"garbage", "{{{", "yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name+".yaml")
			if tt.content != "" {
				writeRaw(t, path, tt.content)
			}
			_, err := OpenFile(path, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("OpenFile = %v, want an error naming %s and mentioning %q", err, path, tt.want)
			}
		})
	}
}

func TestOpenFileServesAccounts(t *testing.T) {
	key := newTestKey(t)
	path := filepath.Join(t.TempDir(), "credentials.yaml")
	writeAccounts(t, path, account("demo", withKeys(key), withLabel("1001")), account("other", withKeys("x")))
	f, err := OpenFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.Len() != 2 || f.Generation() != 1 {
		t.Errorf("Len, Generation = %d, %d; want 2, 1", f.Len(), f.Generation())
	}
	id, err := NewVerifier(f).Authenticate("demo#1001", key)
	if err != nil || id.APIUser != "demo" || id.LabelID != "1001" {
		t.Errorf("Authenticate = %+v, %v; want demo#1001", id, err)
	}
	if _, ok := f.Lookup("nobody"); ok {
		t.Error("Lookup found an account that is not in the file")
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "credentials.yaml")
	want := []Account{
		account("demo", withKeys("k1", "k2"), withBudget(7), withDomains("example.com"), withLabel("1001")),
		account("other", withKeys("k3"), suspended()),
	}
	if err := WriteFile(path, want); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(data)
	if err != nil {
		t.Fatalf("written file does not parse: %v\n%s", err, data)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("read back\n%+v\nwant\n%+v", got, want)
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("file mode = %v (%v), want 0600", info.Mode().Perm(), err)
	}

	t.Run("invalid accounts refused, file untouched", func(t *testing.T) {
		err := WriteFile(path, []Account{account("demo")})
		if err == nil || !strings.Contains(err.Error(), "keyDigests") {
			t.Fatalf("WriteFile = %v, want a keyDigests error", err)
		}
		if after, _ := os.ReadFile(path); string(after) != string(data) {
			t.Errorf("file changed after a refused write:\n%s", after)
		}
	})
	t.Run("nil accounts write an empty list", func(t *testing.T) {
		empty := filepath.Join(dir, "empty.yaml")
		if err := WriteFile(empty, nil); err != nil {
			t.Fatal(err)
		}
		f, err := OpenFile(empty, nil)
		if err != nil || f.Len() != 0 {
			t.Fatalf("OpenFile = %v; want an empty, valid file", err)
		}
	})
	t.Run("no temporary files left", func(t *testing.T) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if strings.Contains(e.Name(), ".tmp-") {
				t.Errorf("temporary file %s left behind", e.Name())
			}
		}
	})
}

func TestFileReload(t *testing.T) {
	tests := []struct {
		name string
		// setup creates the file with the initial accounts and returns the
		// path to open and a function that replaces its content.
		setup     func(t *testing.T, initial []Account) (path string, update func([]Account))
		pollEvery time.Duration
	}{
		{"write in place", inPlaceFile, never},
		{"rename and replace", renamedFile, never},
		{"kubernetes ..data swap", kubernetesFile, never},
		// A symlink into another directory gets no events in the watched
		// one: only polling sees the change.
		{"symlink elsewhere, by polling", symlinkedFile, 20 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			oldKey, newKey := newTestKey(t), newTestKey(t)
			path, update := tt.setup(t, []Account{account("demo", withKeys(oldKey))})
			logs := &logRecorder{}
			f := runFile(t, path, logs, tt.pollEvery)
			v := NewVerifier(f)
			if _, err := v.Authenticate("demo", oldKey); err != nil {
				t.Fatalf("before update: %v", err)
			}

			// Rotate: the new file keeps demo with only the new key and adds an account.
			update([]Account{account("demo", withKeys(newKey)), account("added", withKeys(newKey))})
			waitGeneration(t, f, 2)

			if _, err := v.Authenticate("demo", newKey); err != nil {
				t.Errorf("new key refused after reload: %v", err)
			}
			if _, err := v.Authenticate("demo", oldKey); !errors.Is(err, ErrInvalid) {
				t.Errorf("old key after reload: err = %v, want ErrInvalid", err)
			}
			if f.Len() != 2 {
				t.Errorf("Len = %d after reload, want 2", f.Len())
			}
			if n := logs.count("credentials reloaded"); n != 1 {
				t.Errorf("logged %d reloads, want 1; log: %q", n, logs.snapshotMessages())
			}
		})
	}
}

func TestFileInvalidUpdateKeepsSnapshot(t *testing.T) {
	tests := []struct {
		name    string
		content string
	}{
		{"invalid account", "accounts: [{apiUser: demo}]\n"},
		{"unknown field", "accounts: []\nextra: 1\n"},
		{"truncated to empty", ""},
		{"garbage", "\x00{{{"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := newTestKey(t)
			path, _ := inPlaceFile(t, []Account{account("demo", withKeys(key))})
			logs := &logRecorder{}
			f := runFile(t, path, logs, never)

			writeRaw(t, path, tt.content)
			waitFor(t, "the failed reload to be logged", func() bool {
				return logs.count("credentials reload failed; keeping previous accounts") > 0
			})

			if _, err := NewVerifier(f).Authenticate("demo", key); err != nil {
				t.Errorf("previous account refused after an invalid update: %v", err)
			}
			if f.Generation() != 1 || f.Len() != 1 {
				t.Errorf("Generation, Len = %d, %d; want 1, 1", f.Generation(), f.Len())
			}
		})
	}
}

func TestFileRecoversAfterFileRemoved(t *testing.T) {
	key := newTestKey(t)
	path, update := renamedFile(t, []Account{account("demo", withKeys("old"))})
	logs := &logRecorder{}
	f := runFile(t, path, logs, never)

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the missing file to be logged", func() bool {
		return logs.count("credentials reload failed; keeping previous accounts") > 0
	})
	if _, ok := f.Lookup("demo"); !ok {
		t.Fatal("account dropped while the file was missing")
	}

	update([]Account{account("demo", withKeys(key))})
	waitGeneration(t, f, 2)
	if _, err := NewVerifier(f).Authenticate("demo", key); err != nil {
		t.Errorf("key from the restored file refused: %v", err)
	}
}

func TestRunReturnsWhenCancelled(t *testing.T) {
	path, _ := inPlaceFile(t, []Account{account("demo", withKeys("k"))})
	f, err := OpenFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := f.Run(ctx); err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
}

// runFile opens path and runs its watcher until the test ends.
func runFile(t *testing.T, path string, logs *logRecorder, pollEvery time.Duration) *File {
	t.Helper()
	f, err := OpenFile(path, slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	f.pollEvery = pollEvery
	f.settle = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	return f
}

// waitGeneration waits until f has loaded at least gen times.
func waitGeneration(t *testing.T, f *File, gen uint64) {
	t.Helper()
	waitFor(t, "the reload", func() bool { return f.Generation() >= gen })
}

// waitFor polls cond until it holds or reloadDeadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(reloadDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting %v for %s", reloadDeadline, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// inPlaceFile keeps the file's inode and rewrites its bytes, as `cat >` or
// an editor configured not to rename does.
func inPlaceFile(t *testing.T, initial []Account) (string, func([]Account)) {
	path := filepath.Join(t.TempDir(), "credentials.yaml")
	writeAccounts(t, path, initial...)
	return path, func(accounts []Account) { writeRaw(t, path, docOf(accounts...)) }
}

// renamedFile replaces the file by renaming a new one over it, as WriteFile
// and most editors do.
func renamedFile(t *testing.T, initial []Account) (string, func([]Account)) {
	path := filepath.Join(t.TempDir(), "credentials.yaml")
	writeAccounts(t, path, initial...)
	return path, func(accounts []Account) { writeAccounts(t, path, accounts...) }
}

// kubernetesFile lays files out as the kubelet does for a mounted ConfigMap
// or Secret: credentials.yaml -> ..data/credentials.yaml, ..data -> a
// timestamped directory, and an update swaps ..data by renaming a new
// symlink over it, then removes the old directory.
func kubernetesFile(t *testing.T, initial []Account) (string, func([]Account)) {
	dir := t.TempDir()
	version := func(name string, accounts []Account) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeRaw(t, filepath.Join(dir, name, "credentials.yaml"), docOf(accounts...))
	}
	version("..2026_01_01", initial)
	symlink(t, "..2026_01_01", filepath.Join(dir, "..data"))
	symlink(t, filepath.Join("..data", "credentials.yaml"), filepath.Join(dir, "credentials.yaml"))

	return filepath.Join(dir, "credentials.yaml"), func(accounts []Account) {
		version("..2026_01_02", accounts)
		symlink(t, "..2026_01_02", filepath.Join(dir, "..data_tmp"))
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(filepath.Join(dir, "..2026_01_01")); err != nil {
			t.Fatal(err)
		}
	}
}

// symlinkedFile opens a symlink whose target lives in another directory and
// is rewritten in place there.
func symlinkedFile(t *testing.T, initial []Account) (string, func([]Account)) {
	target := filepath.Join(t.TempDir(), "real.yaml")
	writeAccounts(t, target, initial...)
	path := filepath.Join(t.TempDir(), "credentials.yaml")
	symlink(t, target, path)
	return path, func(accounts []Account) { writeRaw(t, target, docOf(accounts...)) }
}

func writeAccounts(t *testing.T, path string, accounts ...Account) {
	t.Helper()
	if err := WriteFile(path, accounts); err != nil {
		t.Fatal(err)
	}
}

func writeRaw(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
