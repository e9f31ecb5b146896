package spool

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
)

// Layout of a spool directory, maildir-like:
//
//	<path>/lock     held (flock) by the process that owns the spool
//	<path>/tmp/<id> a message being received; never acknowledged
//	<path>/new/<id> a committed message, waiting for delivery
//
// A message file is one JSON line holding the Envelope, then the body bytes
// exactly as the SMTP server wrote them.
const (
	tmpDir   = "tmp"
	newDir   = "new"
	lockFile = "lock"

	// maxHeader bounds the envelope line read back by Open, so a damaged
	// file cannot make the reader buffer the whole body looking for "\n".
	// A few thousand recipients fit comfortably.
	maxHeader = 4 << 20
	// maxIDLen keeps "<id>" plus any suffix a consumer adds (".eml") below
	// the 255-byte file name limit of common file systems.
	maxIDLen = 200
)

// Dir is a durable spool kept in a directory. A committed message survives a
// crash or power loss; a message that was never committed is dropped when the
// spool is opened again. Delivery is at least once: Remove does not wait for
// the removal to be durable, so a crash soon after it may bring the message
// back and it is delivered again.
//
// A Dir is safe for concurrent use. Only one process may open a directory at a
// time (an flock on <path>/lock enforces it), because OpenDir clears tmp/ and
// a second deliverer would duplicate every message.
type Dir struct {
	path   string
	log    *slog.Logger
	lock   *os.File
	syncer *dirSyncer // group-commits fsyncs of new/

	closeOnce sync.Once
	closeErr  error
}

var _ Spool = (*Dir)(nil)

// OpenDir opens the spool at path, creating it if needed, and removes
// messages left in tmp/ by a previous run: they were never committed, so no
// client was told they were accepted.
func OpenDir(path string, log *slog.Logger) (*Dir, error) {
	d, err := openDir(path, log)
	if err != nil {
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	return d, nil
}

func openDir(path string, log *slog.Logger) (*Dir, error) {
	for _, sub := range []string{tmpDir, newDir} {
		if err := os.MkdirAll(filepath.Join(path, sub), 0o700); err != nil {
			return nil, err
		}
	}
	// The spool's own directories must survive a crash before any message
	// in them can.
	for _, dir := range []string{filepath.Dir(path), path} {
		if err := syncPath(dir); err != nil {
			return nil, err
		}
	}
	lock, err := lockPath(filepath.Join(path, lockFile))
	if err != nil {
		return nil, err
	}
	d := &Dir{path: path, log: log, lock: lock}
	if err := d.clearTmp(); err != nil {
		lock.Close()
		return nil, err
	}
	nd, err := os.Open(filepath.Join(path, newDir))
	if err != nil {
		lock.Close()
		return nil, err
	}
	d.syncer = newDirSyncer(nd)
	return d, nil
}

func (d *Dir) clearTmp() error {
	entries, err := os.ReadDir(filepath.Join(d.path, tmpDir))
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(d.path, tmpDir, e.Name())); err != nil {
			return err
		}
		d.log.Info("spool dropped uncommitted message", "id", e.Name())
	}
	return nil
}

// Begin creates tmp/<env.ID>; the id must be a valid file name (see Open).
func (d *Dir) Begin(ctx context.Context, env Envelope) (Writer, error) {
	w, err := d.begin(ctx, env)
	if err != nil {
		return nil, fmt.Errorf("spool message %s: %w", env.ID, err)
	}
	return w, nil
}

func (d *Dir) begin(ctx context.Context, env Envelope) (*dirWriter, error) {
	if err := checkID(env.ID); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if d.syncer.isClosed() {
		return nil, ErrClosed
	}
	header, err := json.Marshal(env)
	if err != nil {
		return nil, err
	}
	// Open could not read it back: refuse now rather than acknowledge a
	// message that can never be delivered.
	if len(header) >= maxHeader {
		return nil, errHeaderTooLong
	}
	tmp := d.tmpPath(env.ID)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	buf := buffers.Get().(*bufio.Writer)
	buf.Reset(f)
	w := &dirWriter{d: d, id: env.ID, tmp: tmp, f: f, buf: buf}
	// json.Marshal escapes control characters, so the header is one line.
	w.buf.Write(header)
	w.buf.WriteByte('\n')
	return w, nil
}

// Pending lists the committed messages, oldest first: ids are time-sortable
// and os.ReadDir returns names sorted. Files whose names are not valid ids
// (nothing of ours) are skipped.
func (d *Dir) Pending() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(d.path, newDir))
	if err != nil {
		return nil, fmt.Errorf("spool pending: %w", err)
	}
	ids := make([]string, 0, len(entries))
	for _, e := range entries {
		if checkID(e.Name()) == nil && e.Type().IsRegular() {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// Open returns the envelope of a committed message and a reader of its body,
// byte for byte as it was written. The caller closes the reader.
func (d *Dir) Open(id string) (Envelope, io.ReadCloser, error) {
	env, body, err := d.open(id)
	if err != nil {
		return Envelope{}, nil, fmt.Errorf("spool message %s: %w", id, err)
	}
	return env, body, nil
}

func (d *Dir) open(id string) (Envelope, io.ReadCloser, error) {
	if err := checkID(id); err != nil {
		return Envelope{}, nil, err
	}
	f, err := os.Open(d.newPath(id))
	if err != nil {
		return Envelope{}, nil, err
	}
	r := bufio.NewReaderSize(f, readBuffer)
	env, err := readHeader(r)
	if err == nil && env.ID != id {
		err = fmt.Errorf("header names message %q", env.ID)
	}
	if err != nil {
		f.Close()
		return Envelope{}, nil, err
	}
	return env, &bodyReader{r: r, f: f}, nil
}

// readHeader reads the envelope line, refusing lines over maxHeader.
func readHeader(r *bufio.Reader) (Envelope, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxHeader {
			return Envelope{}, errHeaderTooLong
		}
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return Envelope{}, fmt.Errorf("read envelope header: %w", err)
		}
	}
	var env Envelope
	if err := json.Unmarshal(line, &env); err != nil {
		return Envelope{}, fmt.Errorf("decode envelope header: %w", err)
	}
	return env, nil
}

// bodyReader reads past the header through the buffer that already holds
// the first body bytes.
type bodyReader struct {
	r *bufio.Reader
	f *os.File
}

func (b *bodyReader) Read(p []byte) (int, error)         { return b.r.Read(p) }
func (b *bodyReader) WriteTo(w io.Writer) (int64, error) { return b.r.WriteTo(w) }
func (b *bodyReader) Close() error                       { return b.f.Close() }

// Remove deletes a delivered message. It does not wait for the removal to be
// durable; the next group fsync (or Close) covers it, and a crash before that
// only means the message is delivered again.
func (d *Dir) Remove(id string) error {
	if err := checkID(id); err != nil {
		return fmt.Errorf("spool message %s: %w", id, err)
	}
	if err := os.Remove(d.newPath(id)); err != nil {
		return fmt.Errorf("spool message %s: %w", id, err)
	}
	// A closed spool syncs no more; at-least-once delivery tolerates that.
	d.syncer.join()
	return nil
}

// Close stops the syncer after the fsyncs already asked for, and releases the
// directory. Commits still waiting then fail with ErrClosed or complete.
// Closing again returns the first result.
func (d *Dir) Close() error {
	d.closeOnce.Do(func() {
		if err := errors.Join(d.syncer.close(), d.lock.Close()); err != nil {
			d.closeErr = fmt.Errorf("close spool %s: %w", d.path, err)
		}
	})
	return d.closeErr
}

func (d *Dir) tmpPath(id string) string { return filepath.Join(d.path, tmpDir, id) }
func (d *Dir) newPath(id string) string { return filepath.Join(d.path, newDir, id) }

var errHeaderTooLong = errors.New("envelope header too long")

// errBadID is returned for ids that could escape the spool directory or be
// mistaken for something else in it.
var errBadID = errors.New("invalid message id")

// checkID accepts [A-Za-z0-9._-]{1,200} not starting with '.', which rules
// out "", ".", "..", hidden files and any path separator.
func checkID(id string) error {
	if id == "" || len(id) > maxIDLen || id[0] == '.' {
		return errBadID
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '.' || c == '_' || c == '-'
		if !ok {
			return errBadID
		}
	}
	return nil
}

// syncPath fsyncs a directory so that entries created in it are durable.
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return errors.Join(f.Sync(), f.Close())
}
