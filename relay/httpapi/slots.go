package httpapi

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
)

// slots bound the requests read and built at once, in number and in the
// bytes they declare: a request holds its body, and what is decoded and
// built from it (about five times its size at the peak, measured with a
// 15 MB JSON request), in memory until its message is queued. No account
// may hold more than a quarter of either, so one tenant trickling slow
// uploads cannot keep every other tenant's requests waiting or take the
// relay's memory; and a request waits at most SlotWait, then is told to
// come back.
type slots struct {
	all             chan struct{}
	bytes           *semaphore.Weighted
	perAccount      int
	perAccountBytes int64

	mu    sync.Mutex
	held  map[string]holding
	freed chan struct{} // closed when a request gives its share back
}

// holding is what one account holds.
type holding struct {
	requests int
	bytes    int64
}

// DefaultSlotWait is how long a request waits for a slot.
const DefaultSlotWait = 30 * time.Second

// newSlots makes n slots sharing maxBytes. An account's share of the
// bytes is never less than one request of the largest size (maxRequest).
func newSlots(n int, maxBytes, maxRequest int64) *slots {
	return &slots{
		all: make(chan struct{}, n), bytes: semaphore.NewWeighted(maxBytes),
		perAccount: max(1, n/4), perAccountBytes: max(maxBytes/4, maxRequest),
		held: map[string]holding{}, freed: make(chan struct{}),
	}
}

// take holds a slot and size bytes for account; release gives them back.
// A request beyond the account's share waits for one of the account's own
// requests to finish, and one beyond the server's for any: at most wait
// in all, then it fails with errAccountBusy or errNoSlot. Waiting, rather
// than failing at once, lets a client send with more workers than its
// share and be served in turn.
func (s *slots) take(ctx context.Context, account string, size int64, wait time.Duration) (release func(), err error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if !s.reserve(ctx, account, size) {
		return nil, errAccountBusy
	}
	giveBack := func() { s.unreserve(account, size) }
	select {
	case s.all <- struct{}{}:
	case <-ctx.Done():
		giveBack()
		return nil, errNoSlot
	}
	if err := s.bytes.Acquire(ctx, size); err != nil {
		<-s.all
		giveBack()
		return nil, errNoSlot
	}
	return func() { s.bytes.Release(size); <-s.all; giveBack() }, nil
}

// reserve counts a request of size against account's share, waiting for
// room until ctx ends.
func (s *slots) reserve(ctx context.Context, account string, size int64) bool {
	for {
		s.mu.Lock()
		h := s.held[account]
		if h.requests < s.perAccount && h.bytes+size <= s.perAccountBytes {
			s.held[account] = holding{h.requests + 1, h.bytes + size}
			s.mu.Unlock()
			return true
		}
		freed := s.freed
		s.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			return false
		}
	}
}

func (s *slots) unreserve(account string, size int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.held[account]
	if h.requests--; h.requests == 0 {
		delete(s.held, account)
	} else {
		h.bytes -= size
		s.held[account] = h
	}
	close(s.freed) // wakes the requests waiting for their account's share
	s.freed = make(chan struct{})
}

type slotError string

func (e slotError) Error() string { return string(e) }

const (
	errAccountBusy = slotError("this account has as many requests under way as it may; send fewer at once")
	errNoSlot      = slotError("the relay is busy; try again later")
)
