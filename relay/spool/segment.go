package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

const (
	logExt  = ".log"
	doneExt = ".done"
	// seqDigits zero-pads sequence numbers so names sort in commit order.
	seqDigits = 16
)

// segment is one <seq>.log file and its <seq>.done. Records are appended
// only to the active segment, by the committer; every other segment is
// sealed and only read, until nothing in it is left to deliver and its files
// are deleted.
type segment struct {
	seq uint64
	dir string
	// r is shared by every body reader of this segment; it is closed once
	// the segment is gone and the last reader is closed.
	r *os.File

	// Guarded by Log.mu.
	live   int      // records in the index
	refs   int      // body readers not yet closed
	sealed bool     // no more appends: it may be deleted once live is 0
	gone   bool     // deleted, or the Log closed: r closes with the last reader
	done   *os.File // <seq>.done, opened by the first Remove
	doneTo []byte   // scratch for markDone
}

func segmentName(seq uint64, ext string) string {
	return fmt.Sprintf("%0*d%s", seqDigits, seq, ext)
}

// parseSegmentName accepts exactly what segmentName makes.
func parseSegmentName(name string) (seq uint64, ext string, ok bool) {
	for _, ext := range []string{logExt, doneExt} {
		digits, found := strings.CutSuffix(name, ext)
		if !found || len(digits) != seqDigits {
			continue
		}
		seq, err := strconv.ParseUint(digits, 10, 64)
		if err != nil {
			return 0, "", false
		}
		return seq, ext, true
	}
	return 0, "", false
}

func (s *segment) logPath() string  { return filepath.Join(s.dir, segmentName(s.seq, logExt)) }
func (s *segment) donePath() string { return filepath.Join(s.dir, segmentName(s.seq, doneExt)) }

// markDone appends a delivered record to the .done file, without fsync: if a
// crash loses the line, the message is delivered again (at least once), and
// not paying an fsync per delivery is what lets delivery keep up with the
// group-committed writes. The caller holds Log.mu.
func (s *segment) markDone(off int64, id string) error {
	if s.done == nil {
		f, err := os.OpenFile(s.donePath(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		s.done = f
	}
	s.doneTo = appendDone(s.doneTo[:0], off, id)
	_, err := s.done.Write(s.doneTo)
	return err
}

// closeFiles closes the .done handle, and the read handle unless a body
// reader still uses it (the last one closes it). The caller holds Log.mu and
// has set gone.
func (s *segment) closeFiles() error {
	var errs []error
	if s.done != nil {
		errs = append(errs, s.done.Close())
		s.done = nil
	}
	if s.refs == 0 && s.r != nil {
		errs = append(errs, s.r.Close())
		s.r = nil
	}
	return errors.Join(errs...)
}

// removeFiles deletes a segment with nothing left to deliver. The .log goes
// first and its removal is made durable before the .done goes: a .log that
// outlived its .done would bring back every message delivered from it.
func removeFiles(segDir *os.File, s *segment) error {
	if err := os.Remove(s.logPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := segDir.Sync(); err != nil {
		return err
	}
	if err := os.Remove(s.donePath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
