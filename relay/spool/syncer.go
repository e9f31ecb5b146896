package spool

import (
	"context"
	"errors"
	"os"
	"sync"
)

// ErrClosed is returned by a Dir after Close.
var ErrClosed = errors.New("spool closed")

// dirSyncer group-commits fsyncs of one directory. A rename is durable only
// once its directory is fsynced, and with many sessions committing at once a
// single fsync can cover every rename done before it started. So callers join
// the batch that has not started yet; one goroutine takes that batch, fsyncs
// once and releases everyone in it. No timer is involved: a lone committer
// pays one fsync, and a crowd arriving during an fsync shares the next one.
type dirSyncer struct {
	dir *os.File

	mu     sync.Mutex
	next   *syncBatch // waiting for an fsync to start; nil when nobody waits
	closed bool

	kick chan struct{} // 1-buffered: "next is set"; closed by close
	done chan struct{} // closed when run returns
}

// syncBatch is one fsync shared by everyone who joined it. err is written
// before done is closed, so readers that saw done closed may read it.
type syncBatch struct {
	done chan struct{}
	err  error
}

func newDirSyncer(dir *os.File) *dirSyncer {
	s := &dirSyncer{dir: dir, kick: make(chan struct{}, 1), done: make(chan struct{})}
	go s.run()
	return s
}

// join returns a batch whose fsync has not started yet, so it will cover
// every directory change the caller made before calling join.
func (s *dirSyncer) join() (*syncBatch, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if s.next == nil {
		s.next = &syncBatch{done: make(chan struct{})}
		// A full buffer means a kick is already pending; the syncer will see
		// this batch when it handles that kick.
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	return s.next, nil
}

// sync waits until the caller's earlier directory changes are durable. When
// ctx ends first the fsync still happens; only the wait is abandoned.
func (s *dirSyncer) sync(ctx context.Context) error {
	b, err := s.join()
	if err != nil {
		return err
	}
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *dirSyncer) run() {
	defer close(s.done)
	for range s.kick {
		s.flush()
	}
	// close shut kick under mu, so no batch can be created any more; a batch
	// whose kick was still buffered was handled by the loop above.
	s.flush()
}

func (s *dirSyncer) flush() {
	s.mu.Lock()
	b := s.next
	s.next = nil
	s.mu.Unlock()
	if b == nil {
		return
	}
	b.err = s.dir.Sync()
	close(b.done)
}

// close waits for pending batches, makes a last fsync (covering lazy changes
// such as removals) and closes the directory.
func (s *dirSyncer) close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.kick)
	s.mu.Unlock()
	<-s.done
	return errors.Join(s.dir.Sync(), s.dir.Close())
}

func (s *dirSyncer) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}
