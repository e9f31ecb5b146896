package queue

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"sync"
)

// finishedFile, in an embedded queue's directory, lists the stream
// sequences of messages this relay finished (Done or Retry) since the last
// purge, eight bytes each.
const finishedFile = "finished"

// finished remembers, across a SIGKILL, which messages were finished.
//
// The embedded server writes a consumer's acknowledgements at most ten times
// a second, and the stream keeps acknowledged messages until reap purges
// them. A relay killed in between comes back with a consumer that forgot
// its last acknowledgements, and would deliver those messages again: at
// full speed, hundreds per kill. So every finish is also appended here
// before it is acknowledged, without a sync (a write survives SIGKILL; a
// power cut costs duplicates, never a message), and Next drops a message an
// earlier process finished. Entries at or below what reap purged can no
// longer come back, and are pruned. An external JetStream outlives the
// relay and keeps its acknowledgements, so it needs no file (a nil
// *finished).
type finished struct {
	mu     sync.Mutex
	path   string
	f      *os.File
	before map[uint64]bool // finished by earlier processes
	count  int             // entries in the file
}

func openFinished(path string) (*finished, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open the queue's record of finished messages: %w", err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	fin := &finished{path: path, f: f, before: map[uint64]bool{}}
	// A torn last entry (a kill during the write) is ignored.
	for ; len(b) >= 8; b = b[8:] {
		fin.before[binary.BigEndian.Uint64(b)] = true
		fin.count++
	}
	if _, err := f.Seek(int64(fin.count*8), io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return fin, nil
}

// finishedBefore reports whether an earlier process finished seq.
func (f *finished) finishedBefore(seq uint64) bool {
	if f == nil {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.before[seq]
}

// record notes that seq is finished, before its acknowledgement is sent.
func (f *finished) record(seq uint64) error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.f.Write(binary.BigEndian.AppendUint64(nil, seq)); err != nil {
		return fmt.Errorf("record finished stream message %d: %w", seq, err)
	}
	f.count++
	return nil
}

// prune drops the entries at or below purged, which the stream no longer
// holds, once the file has grown: it is rewritten beside and renamed over.
func (f *finished) prune(purged uint64) error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.count < 64<<10 {
		return nil
	}
	if _, err := f.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	b, err := io.ReadAll(f.f)
	if err != nil {
		return err
	}
	var keep []byte
	for ; len(b) >= 8; b = b[8:] {
		if binary.BigEndian.Uint64(b) > purged {
			keep = append(keep, b[:8]...)
		}
	}
	for seq := range f.before {
		if seq <= purged {
			delete(f.before, seq)
		}
	}
	tmp := f.path + ".tmp"
	if err := os.WriteFile(tmp, keep, 0o600); err != nil {
		return fmt.Errorf("prune the record of finished messages: %w", err)
	}
	if err := os.Rename(tmp, f.path); err != nil {
		return fmt.Errorf("prune the record of finished messages: %w", err)
	}
	nf, err := os.OpenFile(f.path, os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("reopen the record of finished messages: %w", err)
	}
	f.f.Close()
	f.f, f.count = nf, len(keep)/8
	return nil
}

func (f *finished) close() error {
	if f == nil {
		return nil
	}
	return f.f.Close()
}
