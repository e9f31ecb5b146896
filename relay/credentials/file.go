package credentials

import (
	"github.com/mailfleet/mailfleet/api/wire"

	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"sigs.k8s.io/yaml"
)

const (
	// defaultPollEvery is how often Run rereads the file regardless of
	// events: fsnotify misses changes behind a symlink into another
	// directory, on some network filesystems, and when its queue overflows.
	defaultPollEvery = 2 * time.Second
	// defaultSettle is how long Run waits after an event before reading, so
	// that the burst of events from one save or one ConfigMap swap causes
	// one read, not several.
	defaultSettle = 100 * time.Millisecond
)

// File is a Source backed by a YAML or JSON file (see Parse for the format)
// that it reloads, while Run is running, whenever the file changes.
//
// Lookups read an immutable snapshot through an atomic pointer, so they take
// no lock and never see a half-applied reload. A reload that fails (the file
// is missing or invalid) is logged and the previous snapshot stays in use.
type File struct {
	path string
	log  *slog.Logger
	snap atomic.Pointer[snapshot]
	gen  atomic.Uint64

	// mu serialises reloads; seen is the fingerprint of the last content (or
	// read error) acted on, so unchanged content is neither reparsed nor
	// logged again on every poll.
	mu   sync.Mutex
	seen string

	// pollEvery and settle are fields rather than constants so that tests
	// can isolate the event path from the polling path.
	pollEvery time.Duration
	settle    time.Duration
}

// snapshot is one successful load. It is never modified after it is stored.
type snapshot struct {
	accounts map[string]*Account
}

// OpenFile loads the credentials file at path. It fails if the file cannot be
// read or is invalid; changes are picked up only while Run runs. A nil log
// discards log output.
func OpenFile(path string, log *slog.Logger) (*File, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &File{path: path, log: log, pollEvery: defaultPollEvery, settle: defaultSettle}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("open credentials: %w", err)
	}
	accounts, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("open credentials %s: %w", path, err)
	}
	f.seen = fingerprint(data)
	f.store(accounts)
	log.Info("credentials loaded", "path", path, "accounts", len(accounts))
	return f, nil
}

// Lookup returns the account for apiUser from the current snapshot. The
// account is shared with other callers and must not be modified.
func (f *File) Lookup(apiUser string) (*Account, bool) {
	s := f.snap.Load()
	if s == nil {
		return nil, false
	}
	a, ok := s.accounts[apiUser]
	return a, ok
}

// All yields every account of the current snapshot (webhooks are read
// from them); the accounts are shared and must not be modified.
func (f *File) All() iter.Seq[*Account] {
	s := f.snap.Load()
	if s == nil {
		return func(func(*Account) bool) {}
	}
	return maps.Values(s.accounts)
}

// Len returns the number of accounts in the current snapshot.
func (f *File) Len() int {
	if s := f.snap.Load(); s != nil {
		return len(s.accounts)
	}
	return 0
}

// Generation counts successful loads, starting at 1 for the one in OpenFile.
// It lets callers (tests, health checks) observe that a change took effect.
func (f *File) Generation() uint64 {
	return f.gen.Load()
}

// Run watches the file and reloads it on change until ctx is done, then
// returns nil. It watches the file's directory, not the file, so that
// replacements by rename (editors, WriteFile) and Kubernetes' swap of the
// ..data symlink in a mounted ConfigMap or Secret are seen; it also rereads
// the file every couple of seconds, because file events can be missed. A
// watcher that cannot be set up is logged and polling carries on alone.
func (f *File) Run(ctx context.Context) error {
	events, errs, stop := f.watch()
	defer stop()
	// Catch a change made between OpenFile and the watch being in place.
	f.reload()

	poll := time.NewTicker(f.pollEvery)
	defer poll.Stop()
	settle := time.NewTimer(f.settle)
	settle.Stop()
	defer settle.Stop()
	pending := false // a settle timer is running; later events ride on it
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if !pending {
				settle.Reset(f.settle)
				pending = true
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			f.log.Warn("credentials watch error; polling continues", "path", f.path, "err", err)
		case <-settle.C:
			pending = false
			f.reload()
		case <-poll.C:
			f.reload()
		}
	}
}

// watch starts an fsnotify watch on the file's directory. On failure it logs
// and returns nil channels, which block forever in a select.
func (f *File) watch() (<-chan fsnotify.Event, <-chan error, func()) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		f.log.Warn("credentials watch unavailable; polling only", "path", f.path, "err", err)
		return nil, nil, func() {}
	}
	if err := w.Add(filepath.Dir(f.path)); err != nil {
		w.Close()
		f.log.Warn("credentials watch unavailable; polling only", "path", f.path, "err", err)
		return nil, nil, func() {}
	}
	return w.Events, w.Errors, func() { w.Close() }
}

// reload rereads the file and, if its content changed and is valid, swaps in
// a new snapshot. Any event in the directory leads here, so unchanged content
// must be cheap: it costs one read and one hash.
func (f *File) reload() {
	data, err := os.ReadFile(f.path)
	fp := fingerprint(data)
	if err != nil {
		fp = "error: " + err.Error()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if fp == f.seen {
		return
	}
	f.seen = fp
	if err != nil {
		f.log.Error("credentials reload failed; keeping previous accounts", "path", f.path, "err", err)
		return
	}
	accounts, err := Parse(data)
	if err != nil {
		f.log.Error("credentials reload failed; keeping previous accounts", "path", f.path, "err", err)
		return
	}
	f.store(accounts)
	f.log.Info("credentials reloaded", "path", f.path, "accounts", len(accounts), "generation", f.Generation())
}

// store publishes accounts, already validated, as the current snapshot.
func (f *File) store(accounts []Account) {
	m := make(map[string]*Account, len(accounts))
	for i := range accounts {
		m[accounts[i].APIUser] = &accounts[i]
	}
	f.snap.Store(&snapshot{accounts: m})
	f.gen.Add(1)
}

// fingerprint identifies file content without keeping a copy of it.
func fingerprint(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// WriteFile writes accounts to path in the format Parse reads, replacing any
// existing file atomically: a reader (such as a File watching path) sees the
// old content or the new, never a partial write. It refuses accounts that
// Parse would reject, so what it writes can always be opened. The file is
// created with mode 0600.
func WriteFile(path string, accounts []Account) error {
	if accounts == nil {
		accounts = []Account{} // "accounts: null" would read back as missing
	}
	data, err := yaml.Marshal(wire.Shard{Accounts: &accounts})
	if err == nil {
		_, err = Parse(data)
	}
	if err == nil {
		err = replaceFile(path, data)
	}
	if err != nil {
		return fmt.Errorf("write credentials %s: %w", path, err)
	}
	return nil
}

// replaceFile writes data to a temporary file beside path, flushes it to
// disk, renames it over path and flushes the directory, so that a crash
// leaves either the old file or the new one.
func replaceFile(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir flushes a directory, making a rename within it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
