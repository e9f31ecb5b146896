package smtpclient

import (
	"context"
	"sync"
	"time"
)

// Pool keeps sessions with one server open between messages. Every open
// session, busy or idle, holds one of max slots, so the server never sees
// more than max connections from this process.
type Pool struct {
	slots chan struct{}
	// idle holds sessions ready for the next message; its capacity is max,
	// so putting one back never blocks.
	idle        chan *Client
	idleTimeout time.Duration
	maxAge      time.Duration
	dial        func(ctx context.Context) (*Client, error)

	mu       sync.Mutex
	shutdown bool
	stop     chan struct{}
	done     chan struct{}
}

// NewPool returns a pool of at most max sessions opened by dial. A session
// idle for idleTimeout, or open for maxAge, is closed rather than reused.
// Close stops it.
func NewPool(max int, idleTimeout, maxAge time.Duration, dial func(context.Context) (*Client, error)) *Pool {
	p := &Pool{
		slots:       make(chan struct{}, max),
		idle:        make(chan *Client, max),
		idleTimeout: idleTimeout,
		maxAge:      maxAge,
		dial:        dial,
		stop:        make(chan struct{}),
		done:        make(chan struct{}),
	}
	go p.reap()
	return p
}

// Get returns an idle session, or a new one when a slot is free, waiting
// for either until ctx ends. reused says the session carried an earlier
// message, so it needs RSET and may turn out to be dead. The session goes
// back with Put, or Discard when it broke.
func (p *Pool) Get(ctx context.Context) (c *Client, reused bool, err error) {
	for {
		// An idle session first, without waiting: a free slot would
		// open a connection the server need not see.
		select {
		case c := <-p.idle:
			if p.usable(c) {
				return c, true, nil
			}
			continue
		default:
		}
		select {
		case c := <-p.idle:
			if p.usable(c) {
				return c, true, nil
			}
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

// usable says whether an idle session may carry the next message, and
// retires it when it may not.
func (p *Pool) usable(c *Client) bool {
	if p.stale(c, time.Now()) {
		p.retire(c)
		return false
	}
	return true
}

// Put returns a healthy session for the next message.
func (p *Pool) Put(c *Client) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shutdown || p.stale(c, time.Now()) {
		p.retire(c)
		return
	}
	p.idle <- c
}

// Discard closes a broken session without QUIT and frees its slot.
func (p *Pool) Discard(c *Client) {
	c.Close()
	<-p.slots
}

// retire ends a session with QUIT and frees its slot.
func (p *Pool) retire(c *Client) {
	c.Quit()
	<-p.slots
}

func (p *Pool) stale(c *Client, now time.Time) bool {
	return now.Sub(c.lastUsed) >= p.idleTimeout || now.Sub(c.created) >= p.maxAge
}

// reap closes idle sessions before the server times them out, so a reused
// session is rarely a dead one.
func (p *Pool) reap() {
	defer close(p.done)
	t := time.NewTicker(max(p.idleTimeout/2, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			// QUIT outside the lock: a slow server must not hold up Put.
			for _, c := range p.takeStale(now) {
				p.retire(c)
			}
		}
	}
}

// takeStale takes the stale sessions out of idle and leaves the others.
func (p *Pool) takeStale(now time.Time) []*Client {
	var keep, stale []*Client
	p.mu.Lock()
	defer p.mu.Unlock()
	// Get takes idle sessions without the lock, so never block here.
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
	return stale
}

// Close closes the idle sessions; busy ones are closed when they come back.
func (p *Pool) Close() {
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
			p.retire(c)
		default:
			return
		}
	}
}
