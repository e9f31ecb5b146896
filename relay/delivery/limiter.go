package delivery

import (
	"context"
	"sync"
)

// DomainLimiter bounds the work in progress per recipient domain: the
// dispatcher's deliveries, and direct delivery's sessions. A domain's slots
// exist only while someone holds or waits for one, so the limiter does not
// grow with every domain ever seen.
type DomainLimiter struct {
	max   int
	mu    sync.Mutex
	slots map[string]*domainSlots
}

type domainSlots struct {
	sem   chan struct{}
	users int // holders and waiters; the slots go when it is 0
}

// NewDomainLimiter returns a limiter of max at once per domain.
func NewDomainLimiter(max int) *DomainLimiter {
	return &DomainLimiter{max: max, slots: map[string]*domainSlots{}}
}

// Acquire takes one of domain's slots, waiting until ctx ends; release
// gives it back. The error is ctx's, for the caller to say what waited.
func (l *DomainLimiter) Acquire(ctx context.Context, domain string) (release func(), err error) {
	l.mu.Lock()
	s := l.slots[domain]
	if s == nil {
		s = &domainSlots{sem: make(chan struct{}, l.max)}
		l.slots[domain] = s
	}
	s.users++
	l.mu.Unlock()
	leave := func() {
		l.mu.Lock()
		if s.users--; s.users == 0 {
			delete(l.slots, domain)
		}
		l.mu.Unlock()
	}
	select {
	case s.sem <- struct{}{}:
		return func() { <-s.sem; leave() }, nil
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	}
}
