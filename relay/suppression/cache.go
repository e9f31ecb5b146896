package suppression

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// maxCachedKeys bounds the keys a relay keeps in memory, about 110 bytes
// each: past it, addresses it does not hold are looked up in the bucket.
const maxCachedKeys = 200_000

// keyCache is the bucket's keys with when each was written, kept by a
// watch, so that a recipient that is not suppressed (nearly every one) is
// answered from memory: a look-up in the bucket costs a round trip to
// JetStream (about 20 us on the embedded server, BenchmarkSuppressed), and
// RCPT and every delivery attempt ask.
type keyCache struct {
	mu       sync.RWMutex
	written  map[string]time.Time
	ready    bool // the watch has delivered every key the bucket held
	complete bool // and no key was left out for the cap
}

// absent reports whether the cache knows key is not in the bucket. An entry
// older than ttl is gone from the bucket (its messages expire without a
// word to watchers) and so from here.
func (c *keyCache) absent(key string, ttl time.Duration, now time.Time) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if !c.ready {
		return false
	}
	at, ok := c.written[key]
	if ok {
		return ttl > 0 && now.Sub(at) > ttl
	}
	return c.complete
}

func (c *keyCache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.written, c.ready, c.complete = map[string]time.Time{}, false, true
}

func (c *keyCache) update(e jetstream.KeyValueEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e == nil {
		c.ready = true // the initial keys are in
		return
	}
	switch {
	case e.Operation() != jetstream.KeyValuePut:
		delete(c.written, e.Key())
	case len(c.written) < maxCachedKeys:
		c.written[e.Key()] = e.Created()
	default:
		c.complete = false
	}
}

func (c *keyCache) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ready = false
}

// Watch keeps the list's keys in memory until ctx ends. While it is not
// caught up (starting, or its watch lost), every look-up goes to the
// bucket.
func (l *List) Watch(ctx context.Context, log *slog.Logger) {
	for ctx.Err() == nil {
		l.keys.reset()
		w, err := l.kv.WatchAll(ctx, jetstream.MetaOnly())
		if err == nil {
			for e := range w.Updates() {
				l.keys.update(e)
			}
			w.Stop()
		}
		l.keys.stop()
		if ctx.Err() != nil {
			return
		}
		log.Warn("suppression list watch ended; looking up in the bucket until it is back", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
