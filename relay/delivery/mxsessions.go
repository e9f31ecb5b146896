package delivery

import (
	"slices"
	"sync"
	"time"

	"github.com/mailfleet/mailfleet/relay/smtpclient"
)

// DefaultSessionIdle is how long a session kept open for the next message
// to its MX host waits for one before it is closed (Postfix's
// smtp_connection_cache_time_limit is 2 s too): long enough for a backlog
// to a busy provider to find it, short enough that an idle session does
// not hold one of the group's fleet-wide slots for long.
const DefaultSessionIdle = 2 * time.Second

// mxSession is one SMTP session to an MX host and the fleet-wide slot of
// its destination group it holds while open.
type mxSession struct {
	c       *smtpclient.Client
	key     string // its group, host, address and TLS mode
	group   string // its destination group; "" when none
	release func()
	pool    *idleSessions // counts it open until close
	sent    int           // messages it carried
	reused  bool          // carried a message before this one
	timer   *time.Timer
}

// close ends the session and gives its slot back; quit says goodbye first.
func (s *mxSession) close(quit bool) {
	if quit {
		s.c.Quit()
	} else {
		s.c.Close()
	}
	s.release()
	s.pool.ended()
}

// idleSessions keeps sessions open between messages to the same MX host,
// each for at most idle, and hands one put back to the delivery that has
// waited longest for it.
type idleSessions struct {
	idle time.Duration

	mu    sync.Mutex
	byKey map[string][]*mxSession
	// waiting are, per key, the deliveries waiting for a slot that a
	// session kept for their host would spare them, first come first.
	waiting map[string][]*waiter
	open    int // sessions opened and not yet closed
	closed  bool
	drained chan struct{} // closed once the pool is closed and open is 0
}

// waiter is a delivery waiting for a session; put hands it one and calls
// wake, which stops its wait for a slot.
type waiter struct {
	wake   func()
	handed *mxSession
}

func newIdleSessions(idle time.Duration) *idleSessions {
	return &idleSessions{idle: idle, byKey: map[string][]*mxSession{}, waiting: map[string][]*waiter{},
		drained: make(chan struct{})}
}

// opened counts a new session, which its close counts out.
func (p *idleSessions) opened(s *mxSession) {
	p.mu.Lock()
	p.open++
	p.mu.Unlock()
	s.pool = p
}

func (p *idleSessions) ended() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open--
	p.signalDrained()
}

// signalDrained closes drained, once, when the pool is closed and no
// session is open; p.mu is held.
func (p *idleSessions) signalDrained() {
	if !p.closed || p.open > 0 || p.drained == nil {
		return
	}
	close(p.drained)
	p.drained = nil
}

// takeOrWait returns an idle session opened with key or, when there is
// none, the waiter a session put back for key is handed to: one check, so
// that no put falls between the look and the wait.
func (p *idleSessions) takeOrWait(key string, wake func()) (*mxSession, *waiter) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for list := p.byKey[key]; len(list) > 0; list = p.byKey[key] {
		s := list[len(list)-1]
		p.remove(s)
		if s.timer.Stop() {
			s.reused = true
			return s, nil
		}
		// Its timer fired and is closing it.
	}
	w := &waiter{wake: wake}
	p.waiting[key] = append(p.waiting[key], w)
	return nil, w
}

// leave ends w's wait; the session handed to it meanwhile, if any, is the
// caller's.
func (p *idleSessions) leave(key string, w *waiter) *mxSession {
	p.mu.Lock()
	defer p.mu.Unlock()
	removeFrom(p.waiting, key, w)
	return w.handed
}

// evict closes one idle session of group not opened with except, so that
// its slot can serve a delivery to another of the group's hosts; false
// when there was none.
func (p *idleSessions) evict(group, except string) bool {
	p.mu.Lock()
	var victim *mxSession
	for key, list := range p.byKey {
		if key == except {
			continue
		}
		for _, s := range list {
			if s.group == group && s.timer.Stop() {
				victim = s
				break
			}
		}
		if victim != nil {
			break
		}
	}
	if victim != nil {
		p.remove(victim)
	}
	p.mu.Unlock()
	if victim == nil {
		return false
	}
	victim.close(true)
	return true
}

// put hands s to the delivery waiting longest for its host, else keeps it
// open for the next; false (and s left to its caller) once the pool is
// closed.
func (p *idleSessions) put(s *mxSession) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	if ws := p.waiting[s.key]; len(ws) > 0 {
		w := ws[0]
		removeFrom(p.waiting, s.key, w)
		s.reused = true
		w.handed = s
		w.wake()
		return true
	}
	s.reused = false
	p.byKey[s.key] = append(p.byKey[s.key], s)
	s.timer = time.AfterFunc(p.idle, func() {
		p.mu.Lock()
		p.remove(s)
		p.mu.Unlock()
		s.close(true)
	})
	return true
}

// remove drops s from the index; p.mu is held.
func (p *idleSessions) remove(s *mxSession) { removeFrom(p.byKey, s.key, s) }

// removeFrom drops x from m[key], and the key once its list is empty.
func removeFrom[T comparable](m map[string][]T, key string, x T) {
	list := m[key]
	if i := slices.Index(list, x); i >= 0 {
		list = slices.Delete(list, i, i+1)
	}
	if len(list) == 0 {
		delete(m, key)
	} else {
		m[key] = list
	}
}

// close ends every idle session and waits, up to wait, for the sessions
// still carrying a message (and those whose idle time ran out) to end, so
// that their slots are given back while the fleet's buckets can be reached.
func (p *idleSessions) close(wait time.Duration) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	var all []*mxSession
	for _, list := range p.byKey {
		for _, s := range list {
			if s.timer.Stop() {
				all = append(all, s)
			}
		}
	}
	clear(p.byKey)
	drained := p.drained
	p.signalDrained()
	p.mu.Unlock()
	for _, s := range all {
		go s.close(true)
	}
	select {
	case <-drained:
	case <-time.After(wait):
	}
}
