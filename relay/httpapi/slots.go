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
// relay's memory; and a request waits at most slotWait, then is told to
// come back.
type slots struct {
	all             chan struct{}
	bytes           *semaphore.Weighted
	perAccount      int
	perAccountBytes int64

	mu   sync.Mutex
	held map[string]holding
}

// holding is what one account holds.
type holding struct {
	requests int
	bytes    int64
}

// slotWait is how long a request waits for one of the server's slots.
const slotWait = 30 * time.Second

// newSlots makes n slots sharing maxBytes. An account's share of the
// bytes is never less than one request of the largest size (maxRequest).
func newSlots(n int, maxBytes, maxRequest int64) *slots {
	return &slots{
		all: make(chan struct{}, n), bytes: semaphore.NewWeighted(maxBytes),
		perAccount: max(1, n/4), perAccountBytes: max(maxBytes/4, maxRequest),
		held: map[string]holding{},
	}
}

// take holds a slot and size bytes for account; release gives them back.
// It fails with errAccountBusy when the account holds its share, and with
// errNoSlot when none came free in time or ctx ended.
func (s *slots) take(ctx context.Context, account string, size int64) (release func(), err error) {
	if !s.reserve(account, size) {
		return nil, errAccountBusy
	}
	giveBack := func() { s.unreserve(account, size) }
	ctx, cancel := context.WithTimeout(ctx, slotWait)
	defer cancel()
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

// reserve counts a request of size against account's share, if it fits.
func (s *slots) reserve(account string, size int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.held[account]
	if h.requests >= s.perAccount || h.bytes+size > s.perAccountBytes {
		return false
	}
	s.held[account] = holding{h.requests + 1, h.bytes + size}
	return true
}

func (s *slots) unreserve(account string, size int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.held[account]
	if h.requests--; h.requests == 0 {
		delete(s.held, account)
		return
	}
	h.bytes -= size
	s.held[account] = h
}

type slotError string

func (e slotError) Error() string { return string(e) }

const (
	errAccountBusy = slotError("this account has as many requests under way as it may; send fewer at once")
	errNoSlot      = slotError("the relay is busy; try again later")
)
