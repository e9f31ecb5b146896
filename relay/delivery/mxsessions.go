package delivery

import (
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
	key     string // the host, address and TLS mode it was opened with
	group   string // its destination group; "" when none
	release func()
	sent    int  // messages it carried
	reused  bool // taken from the idle sessions for this message
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
}

// idleSessions keeps sessions open between messages to the same MX host,
// each for at most idle.
type idleSessions struct {
	idle time.Duration

	mu     sync.Mutex
	byKey  map[string][]*mxSession
	closed bool
	// waiting are the deliveries waiting for a slot that a session kept
	// for their host would spare them: put wakes them.
	waiting map[string]map[*waiter]struct{}
}

// waiter is a delivery waiting for a slot; wake stops its wait.
type waiter struct{ wake func() }

func newIdleSessions(idle time.Duration) *idleSessions {
	return &idleSessions{idle: idle, byKey: map[string][]*mxSession{}, waiting: map[string]map[*waiter]struct{}{}}
}

// wait registers wake to be called when a session for key is put back,
// until the returned stop.
func (p *idleSessions) wait(key string, wake func()) (stop func()) {
	w := &waiter{wake: wake}
	p.mu.Lock()
	if p.waiting[key] == nil {
		p.waiting[key] = map[*waiter]struct{}{}
	}
	p.waiting[key][w] = struct{}{}
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		delete(p.waiting[key], w)
		if len(p.waiting[key]) == 0 {
			delete(p.waiting, key)
		}
		p.mu.Unlock()
	}
}

// take returns an idle session opened with key, nil when there is none.
func (p *idleSessions) take(key string) *mxSession {
	p.mu.Lock()
	defer p.mu.Unlock()
	for list := p.byKey[key]; len(list) > 0; list = p.byKey[key] {
		s := list[len(list)-1]
		p.remove(s)
		if s.timer.Stop() {
			s.reused = true
			return s
		}
		// Its timer fired and is closing it.
	}
	return nil
}

// evict closes one idle session of group, so that its slot can serve a
// delivery to another of the group's hosts; false when there was none.
func (p *idleSessions) evict(group string) bool {
	p.mu.Lock()
	var victim *mxSession
	for _, list := range p.byKey {
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

// put keeps s open for the next message to its host; false (and s left
// to its caller) once the pool is closed.
func (p *idleSessions) put(s *mxSession) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	s.reused = false
	p.byKey[s.key] = append(p.byKey[s.key], s)
	for w := range p.waiting[s.key] {
		w.wake()
	}
	s.timer = time.AfterFunc(p.idle, func() {
		p.mu.Lock()
		p.remove(s)
		p.mu.Unlock()
		s.close(true)
	})
	return true
}

// remove drops s from the index; p.mu is held.
func (p *idleSessions) remove(s *mxSession) {
	list := p.byKey[s.key]
	for i, x := range list {
		if x == s {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(p.byKey, s.key)
	} else {
		p.byKey[s.key] = list
	}
}

// close ends every idle session; sessions busy with a message end with it.
func (p *idleSessions) close() {
	p.mu.Lock()
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
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Go(func() { s.close(true) })
	}
	wg.Wait()
}
