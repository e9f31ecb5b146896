package delivery

import (
	"context"
	"sync"
	"time"
)

// pool keeps sessions with one server open between messages. Every open
// session, busy or idle, holds one of max slots, so the server never sees
// more than max connections from this process.
type pool struct {
	slots chan struct{}
	// idle holds sessions ready for the next message; its capacity is max,
	// so putting one back never blocks.
	idle        chan *client
	idleTimeout time.Duration
	maxAge      time.Duration
	dial        func(ctx context.Context) (*client, error)
	closed      func(*client)

	mu       sync.Mutex
	shutdown bool
	stop     chan struct{}
	done     chan struct{}
}

func newPool(max int, idleTimeout, maxAge time.Duration, dial func(context.Context) (*client, error), closed func(*client)) *pool {
	p := &pool{
		slots:       make(chan struct{}, max),
		idle:        make(chan *client, max),
		idleTimeout: idleTimeout,
		maxAge:      maxAge,
		dial:        dial,
		closed:      closed,
		stop:        make(chan struct{}),
		done:        make(chan struct{}),
	}
	go p.reap()
	return p
}

// get returns an idle session, or a new one when a slot is free, waiting
// for either until ctx ends. reused says the session carried an earlier
// message, so it needs RSET and may turn out to be dead.
func (p *pool) get(ctx context.Context) (c *client, reused bool, err error) {
	for {
		select {
		case c := <-p.idle:
			if p.stale(c, time.Now()) {
				p.close(c)
				continue
			}
			return c, true, nil
		default:
		}
		select {
		case c := <-p.idle:
			if p.stale(c, time.Now()) {
				p.close(c)
				continue
			}
			return c, true, nil
		case p.slots <- struct{}{}:
			c, err := p.dial(ctx)
			if err != nil {
				<-p.slots
				return nil, false, err
			}
			return c, false, nil
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
}

// put returns a healthy session for the next message.
func (p *pool) put(c *client) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shutdown || p.stale(c, time.Now()) {
		p.close(c)
		return
	}
	p.idle <- c
}

// discard closes a broken session without QUIT and frees its slot.
func (p *pool) discard(c *client) {
	c.conn.Close()
	p.closed(c)
	<-p.slots
}

// close ends a session with QUIT and frees its slot.
func (p *pool) close(c *client) {
	c.quit()
	p.closed(c)
	<-p.slots
}

func (p *pool) stale(c *client, now time.Time) bool {
	return now.Sub(c.lastUsed) >= p.idleTimeout || now.Sub(c.created) >= p.maxAge
}

// reap closes idle sessions before the server times them out, so a reused
// session is rarely a dead one.
func (p *pool) reap() {
	defer close(p.done)
	t := time.NewTicker(max(p.idleTimeout/2, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			var keep, stale []*client
			p.mu.Lock()
			// get takes idle sessions without the lock, so never block here.
			for n := len(p.idle); n > 0; n-- {
				select {
				case c := <-p.idle:
					if p.stale(c, now) {
						stale = append(stale, c)
					} else {
						keep = append(keep, c)
					}
				default:
				}
			}
			for _, c := range keep {
				p.idle <- c
			}
			p.mu.Unlock()
			// QUIT outside the lock: a slow server must not hold up put.
			for _, c := range stale {
				p.close(c)
			}
		}
	}
}

// shut closes the idle sessions; busy ones are closed when they come back.
func (p *pool) shut() {
	p.mu.Lock()
	if p.shutdown {
		p.mu.Unlock()
		return
	}
	p.shutdown = true
	close(p.stop)
	p.mu.Unlock()
	<-p.done
	for {
		select {
		case c := <-p.idle:
			p.close(c)
		default:
			return
		}
	}
}
