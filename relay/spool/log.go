package spool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// Layout of a spool directory:
//
//	<path>/lock                    held (flock) by the process that owns the spool
//	<path>/segments/<seq>.log      records, appended by the committer (see record.go)
//	<path>/segments/<seq>.done     offsets and ids of records delivered from <seq>.log
//	<path>/tmp/<id>.<random>       a message body too large to buffer; never acknowledged
const (
	segmentsDir = "segments"
	tmpDir      = "tmp"
	lockFile    = "lock"

	// maxIDLen keeps "<id>" plus any suffix a consumer adds (".eml", a spill
	// file's random part) below the 255-byte file name limit of common file
	// systems.
	maxIDLen = 200

	// defaultSegmentLimit is the size past which the committer starts a new
	// segment. Delivered messages free disk space only when their whole
	// segment is delivered, so a segment should be small enough to go soon,
	// and large enough that starting one (a file and a directory fsync) is
	// rare.
	defaultSegmentLimit = 64 << 20
)

// ErrClosed is returned by a Log after Close.
var ErrClosed = errors.New("spool closed")

// Log is a durable, log-structured spool. Messages are appended as records
// to a segment file by a single committer goroutine, which writes every
// record queued while it was busy and then makes them durable with one
// fdatasync: a group commit, with no timer, so a lone message pays one sync
// and a crowd arriving during a sync shares the next one. Commit returns only
// after the sync that covers its record, so an acknowledged message survives
// a crash or power loss; one that was never committed is dropped when the
// spool is opened again.
//
// Delivery is at least once: Remove notes a delivered record in the
// segment's .done file without waiting for that to be durable, so a crash
// soon after may bring the message back and it is delivered again.
//
// A Log is safe for concurrent use. Only one process may open a spool at a
// time (an flock on <path>/lock enforces it), because OpenLog clears tmp/ and
// a second deliverer would duplicate every message.
type Log struct {
	path   string
	log    *slog.Logger
	lock   *os.File
	segDir *os.File // <path>/segments, for fsyncs of its entries

	// segmentLimit is defaultSegmentLimit; tests lower it to see rotation.
	segmentLimit int64
	// sync makes a segment's appended records durable: fdatasync, or a
	// fault injected by a test.
	sync func(*os.File) error

	mu       sync.Mutex
	index    map[string]*entry   // committed, not yet removed
	reserved map[string]struct{} // begun, neither committed nor aborted yet
	segs     map[uint64]*segment // every segment with files on disk
	next     *batch              // waiting for the committer; nil when nobody waits
	closed   bool

	kick    chan struct{} // 1-buffered: "next is set"; closed by Close
	stopped chan struct{} // closed when the committer returns

	// Owned by the committer goroutine (and OpenLog before it starts).
	active  *segment
	w       *os.File // active's write handle
	size    int64    // bytes in active
	nextSeq uint64
	wbuf    []byte // coalesces a batch's small records into one write

	closeOnce sync.Once
	closeErr  error
}

// entry locates a committed record.
type entry struct {
	seg     *segment
	off     int64
	envLen  uint32
	bodyLen uint32
	env     Envelope
}

func (e *entry) bodyOffset() int64 { return e.off + headerSize + int64(e.envLen) }

var _ Spool = (*Log)(nil)

// OpenLog opens the spool at path, creating it if needed. It removes bodies
// left in tmp/ by a previous run and reads every segment back, keeping the
// records that are intact and not yet delivered: a record cut short by a
// crash belongs to a batch whose waiters were never released, so no client
// was told it was accepted. It always starts a new segment rather than
// appending after a tail that may be torn.
func OpenLog(path string, log *slog.Logger) (*Log, error) {
	l, err := openLog(path, log)
	if err != nil {
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	return l, nil
}

func openLog(path string, log *slog.Logger) (*Log, error) {
	for _, sub := range []string{segmentsDir, tmpDir} {
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
	l := &Log{
		path:         path,
		log:          log,
		lock:         lock,
		segmentLimit: defaultSegmentLimit,
		sync:         fdatasync,
		index:        make(map[string]*entry),
		reserved:     make(map[string]struct{}),
		segs:         make(map[uint64]*segment),
		kick:         make(chan struct{}, 1),
		stopped:      make(chan struct{}),
		nextSeq:      1,
	}
	if err := l.start(); err != nil {
		return nil, errors.Join(err, l.closeFiles())
	}
	go l.run()
	return l, nil
}

func (l *Log) start() error {
	if err := refuseFileSpool(l.path); err != nil {
		return err
	}
	if err := l.clearTmp(); err != nil {
		return err
	}
	var err error
	if l.segDir, err = os.Open(filepath.Join(l.path, segmentsDir)); err != nil {
		return err
	}
	if err := l.recover(); err != nil {
		return err
	}
	return l.startSegment()
}

// refuseFileSpool stops a spool left by the earlier one-file-per-message
// implementation from being opened as a log: its acknowledged messages wait
// in new/, and the log would never deliver them.
func refuseFileSpool(path string) error {
	entries, err := os.ReadDir(filepath.Join(path, "new"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(entries) > 0 {
		return fmt.Errorf("new/ holds %d messages of a per-file spool; deliver or move them first", len(entries))
	}
	return nil
}

func (l *Log) clearTmp() error {
	entries, err := os.ReadDir(filepath.Join(l.path, tmpDir))
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(l.path, tmpDir, e.Name())); err != nil {
			return err
		}
		l.log.Info("spool dropped uncommitted message body", "file", e.Name())
	}
	return nil
}

// recover indexes the live records of every segment, oldest first, and
// deletes the segments with nothing left to deliver.
func (l *Log) recover() error {
	dirEntries, err := os.ReadDir(filepath.Join(l.path, segmentsDir))
	if err != nil {
		return err
	}
	logs := map[uint64]bool{}
	var seqs []uint64
	var dones []uint64
	for _, de := range dirEntries {
		seq, ext, ok := parseSegmentName(de.Name())
		if !ok || !de.Type().IsRegular() {
			l.log.Warn("spool ignored unexpected file", "file", filepath.Join(segmentsDir, de.Name()))
			continue
		}
		l.nextSeq = max(l.nextSeq, seq+1)
		if ext == logExt {
			logs[seq] = true
			seqs = append(seqs, seq)
		} else {
			dones = append(dones, seq)
		}
	}
	slices.Sort(seqs)
	var intact int64
	for _, seq := range seqs {
		n, err := l.recoverSegment(seq)
		if err != nil {
			return fmt.Errorf("segment %s: %w", segmentName(seq, logExt), err)
		}
		intact += n
	}
	for _, seq := range dones {
		if !logs[seq] { // the .log went, the .done did not: a deletion cut short
			if err := os.Remove(filepath.Join(l.segDir.Name(), segmentName(seq, doneExt))); err != nil {
				return err
			}
		}
	}
	for _, seq := range seqs {
		if s := l.segs[seq]; s.live == 0 {
			if err := l.deleteSegment(s); err != nil {
				return err
			}
		}
	}
	l.log.Info("spool recovered", "segments", len(l.segs), "messages", len(l.index), "bytes", intact)
	return nil
}

// recoverSegment indexes one segment's live records, returning the bytes of
// intact records read.
func (l *Log) recoverSegment(seq uint64) (int64, error) {
	s := &segment{seq: seq, dir: l.segDir.Name(), sealed: true}
	doneText, err := os.ReadFile(s.donePath())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	done := parseDone(doneText)
	if s.r, err = os.Open(s.logPath()); err != nil {
		return 0, err
	}
	l.segs[seq] = s
	info, err := s.r.Stat()
	if err != nil {
		return 0, err
	}
	end, scanErr := scanRecords(io.NewSectionReader(s.r, 0, info.Size()), info.Size(), func(r scanned) {
		if done[r.off] == r.env.ID {
			return
		}
		// The same id live twice: removed, committed again, and the removal
		// lost in a crash. The later record is the one not yet delivered.
		if old := l.index[r.env.ID]; old != nil {
			l.log.Warn("spool found a message twice; keeping the later copy", "id", r.env.ID,
				"segment", segmentName(old.seg.seq, logExt), "later_segment", segmentName(seq, logExt))
			old.seg.live--
		}
		l.index[r.env.ID] = &entry{seg: s, off: r.off, envLen: r.h.envLen, bodyLen: r.h.bodyLen, env: r.env}
		s.live++
	})
	if scanErr != nil {
		l.log.Warn("spool dropped torn tail", "segment", segmentName(seq, logExt), "offset", end,
			"bytes_dropped", info.Size()-end, "reason", scanErr.Error())
	}
	return end, nil
}

// Begin starts a message; env.ID must be a valid id (see checkID) that is
// neither committed nor being written already.
func (l *Log) Begin(ctx context.Context, env Envelope) (Writer, error) {
	w, err := l.begin(ctx, env)
	if err != nil {
		return nil, fmt.Errorf("spool message %s: %w", env.ID, err)
	}
	return w, nil
}

func (l *Log) begin(ctx context.Context, env Envelope) (*logWriter, error) {
	if err := checkID(env.ID); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	envJSON, err := json.Marshal(env)
	if err != nil {
		return nil, err
	}
	// A scan would take a longer envelope for damage: refuse now rather
	// than acknowledge a message that can never be read back.
	if len(envJSON) >= maxEnvelope {
		return nil, errEnvelopeTooLong
	}
	if err := l.reserve(env.ID); err != nil {
		return nil, err
	}
	env.To = slices.Clone(env.To) // the index keeps it; the caller may reuse its slice
	return newLogWriter(l, env, envJSON)
}

// reserve claims an id until its message is committed or aborted. Two
// messages sharing an id (a bug upstream) must not cost one of them silently
// after both were acknowledged.
func (l *Log) reserve(id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if _, ok := l.reserved[id]; ok {
		return fs.ErrExist
	}
	if _, ok := l.index[id]; ok {
		return fs.ErrExist
	}
	l.reserved[id] = struct{}{}
	return nil
}

func (l *Log) release(id string) {
	l.mu.Lock()
	delete(l.reserved, id)
	l.mu.Unlock()
}

// Pending lists the committed messages not yet removed, sorted: ids are
// time-sortable, so that is oldest first.
func (l *Log) Pending() ([]string, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, fmt.Errorf("spool pending: %w", ErrClosed)
	}
	ids := make([]string, 0, len(l.index))
	for id := range l.index {
		ids = append(ids, id)
	}
	l.mu.Unlock()
	// Sorted outside the lock: with a large backlog the sort is long, and
	// commits need the lock to be indexed.
	slices.Sort(ids)
	return ids, nil
}

// Open returns the envelope of a committed message and a reader of its body,
// byte for byte as it was written. The caller closes the reader; the message
// stays readable until then even if it is removed meanwhile.
func (l *Log) Open(id string) (Envelope, io.ReadCloser, error) {
	env, body, err := l.open(id)
	if err != nil {
		return Envelope{}, nil, fmt.Errorf("spool message %s: %w", id, err)
	}
	return env, body, nil
}

func (l *Log) open(id string) (Envelope, io.ReadCloser, error) {
	if err := checkID(id); err != nil {
		return Envelope{}, nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return Envelope{}, nil, ErrClosed
	}
	e := l.index[id]
	if e == nil {
		return Envelope{}, nil, fs.ErrNotExist
	}
	e.seg.refs++
	env := e.env
	env.To = slices.Clone(env.To)
	body := io.NewSectionReader(e.seg.r, e.bodyOffset(), int64(e.bodyLen))
	return env, &bodyReader{SectionReader: body, l: l, seg: e.seg}, nil
}

// bodyReader reads a body through the segment's shared read handle, which
// must stay open until the last reader is closed.
type bodyReader struct {
	*io.SectionReader
	l   *Log
	seg *segment
}

func (b *bodyReader) Close() error {
	b.l.mu.Lock()
	defer b.l.mu.Unlock()
	if b.seg == nil {
		return nil
	}
	s := b.seg
	b.seg = nil
	s.refs--
	if s.gone && s.refs == 0 && s.r != nil {
		err := s.r.Close()
		s.r = nil
		return err
	}
	return nil
}

// Remove drops a delivered message. The removal is noted in the segment's
// .done file without fsync (at least once: a crash soon after may bring the
// message back). If noting it fails the message is still gone from this
// process, and the error says it may come back after a restart. A segment
// that is no longer written to and has nothing left to deliver is deleted.
func (l *Log) Remove(id string) error {
	if err := l.remove(id); err != nil {
		return fmt.Errorf("spool message %s: %w", id, err)
	}
	return nil
}

func (l *Log) remove(id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	e := l.index[id]
	if e == nil {
		l.mu.Unlock()
		return fs.ErrNotExist
	}
	delete(l.index, id)
	s := e.seg
	s.live--
	if s.live == 0 && s.sealed {
		// Its files are about to go; nothing needs noting in them.
		l.mu.Unlock()
		return l.deleteSegment(s)
	}
	// Under mu, so a deletion of the segment cannot close the file between
	// the check above and the write.
	err := s.markDone(e.off, id)
	l.mu.Unlock()
	return err
}

// deleteSegment forgets a sealed segment with no live records and deletes
// its files. Only one caller can see live reach 0, so only one deletes.
func (l *Log) deleteSegment(s *segment) error {
	l.mu.Lock()
	s.gone = true
	delete(l.segs, s.seq)
	closeErr := s.closeFiles()
	l.mu.Unlock()
	if err := errors.Join(closeErr, removeFiles(l.segDir, s)); err != nil {
		return fmt.Errorf("delete delivered segment %s: %w", segmentName(s.seq, logExt), err)
	}
	l.log.Debug("spool deleted delivered segment", "segment", segmentName(s.seq, logExt))
	return nil
}

// Close lets the committer finish the batches already queued, then closes
// every file and releases the lock. Commits not yet queued fail with
// ErrClosed, as does everything else afterwards. Closing again returns the
// first result.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		close(l.kick)
		l.mu.Unlock()
		<-l.stopped
		if err := l.closeFiles(); err != nil {
			l.closeErr = fmt.Errorf("close spool %s: %w", l.path, err)
		}
	})
	return l.closeErr
}

// closeFiles closes what OpenLog opened, also on its error path. Body
// readers still open fail from now on, except that the last one to close
// closes the shared handle.
func (l *Log) closeFiles() error {
	var errs []error
	if l.w != nil {
		errs = append(errs, l.w.Close())
		l.w = nil
	}
	l.mu.Lock()
	for _, s := range l.segs {
		s.gone = true
		errs = append(errs, s.closeFiles())
	}
	l.mu.Unlock()
	if l.segDir != nil {
		errs = append(errs, l.segDir.Close())
	}
	errs = append(errs, l.lock.Close())
	return errors.Join(errs...)
}

func (l *Log) tmpPath() string { return filepath.Join(l.path, tmpDir) }

// errBadID is returned for ids that could escape the spool directory, or be
// mistaken for something else in it or in a .done file.
var errBadID = errors.New("invalid message id")

// checkID accepts [A-Za-z0-9._-]{1,200} not starting with '.', which rules
// out "", ".", "..", hidden files, any path separator and any space or line
// break. Consumers name files after ids (delivery writes <id>.eml).
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
