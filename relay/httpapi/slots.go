package httpapi

import (
	"context"
	"sync"
	"time"
)

// slots bound the requests read and built at once: each holds its body,
// up to the size limit, in memory. No account may hold more than a
// quarter of them, so one tenant trickling slow uploads cannot keep every
// other tenant's requests waiting; and a request waits for a slot at most
// slotWait, then is told to come back.
type slots struct {
	all        chan struct{}
	perAccount int

	mu   sync.Mutex
	held map[string]int
}

// slotWait is how long a request waits for one of the server's slots.
const slotWait = 30 * time.Second

func newSlots(n int) *slots {
	return &slots{all: make(chan struct{}, n), perAccount: max(1, n/4), held: map[string]int{}}
}

// take holds a slot for account; release gives it back. It fails with
// errAccountBusy when the account holds its share, and with errNoSlot when
// none came free in time or ctx ended.
func (s *slots) take(ctx context.Context, account string) (release func(), err error) {
	s.mu.Lock()
	if s.held[account] >= s.perAccount {
		s.mu.Unlock()
		return nil, errAccountBusy
	}
	s.held[account]++
	s.mu.Unlock()
	giveBack := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.held[account]--; s.held[account] == 0 {
			delete(s.held, account)
		}
	}
	timer := time.NewTimer(slotWait)
	defer timer.Stop()
	select {
	case s.all <- struct{}{}:
		return func() { <-s.all; giveBack() }, nil
	case <-timer.C:
	case <-ctx.Done():
	}
	giveBack()
	return nil, errNoSlot
}

type slotError string

func (e slotError) Error() string { return string(e) }

const (
	errAccountBusy = slotError("this account has as many requests under way as it may; send fewer at once")
	errNoSlot      = slotError("the relay is busy; try again later")
)
