package shaping

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfleet/mailfleet/api/wire"
)

// How the fleet shares its counts.
const (
	// leaseTTL is how long a session slot outlives its holder: a pod that
	// dies holding slots gives them back this long after.
	leaseTTL = 30 * time.Second
	// stateTTL bounds how long per-minute counts and suspensions are kept.
	stateTTL = time.Hour
	// DefaultMaxWait is how long a delivery waits for a slot before its
	// recipients are deferred to the queue's next retry.
	DefaultMaxWait = 30 * time.Second
	// DefaultSuspend is a group's first pause after a 421; each 421 after
	// a pause doubles it, up to MaxSuspend, and a delivery resets it.
	DefaultSuspend = time.Minute
	MaxSuspend     = 30 * time.Minute
)

// Deferral is why a delivery to a group may not start now; its
// recipients are deferred with Enhanced and Text.
type Deferral struct {
	Enhanced, Text string
}

func (d *Deferral) Error() string { return d.Enhanced + " " + d.Text }

// Fleet shares the groups' limits between the relays of one queue stream.
type Fleet struct {
	slots  jetstream.KeyValue
	state  jetstream.KeyValue
	holder string
	// holdings numbers this relay's slot holdings, each key's value.
	holdings atomic.Uint64
	lease    time.Duration
	maxWait  time.Duration
	now      func() time.Time

	mu    sync.Mutex
	gates map[string]chan struct{}
	// paused caches each group's suspension for a second, so a busy group
	// costs one read a second, not one per message.
	paused map[string]pausedUntil
}

type pausedUntil struct {
	until, read time.Time
}

// suspension is a group's pause, as the state bucket keeps it.
type suspension struct {
	Until  time.Time `json:"until"`
	Level  int       `json:"level"`
	Reason string    `json:"reason"`
}

// Open makes or updates the buckets of stream's relays; holder names this
// relay in the slots it takes.
func Open(ctx context.Context, conn *nats.Conn, stream string, replicas int, holder string) (*Fleet, error) {
	return open(ctx, conn, stream, replicas, holder, leaseTTL)
}

func open(ctx context.Context, conn *nats.Conn, stream string, replicas int, holder string, lease time.Duration) (*Fleet, error) {
	js, err := jetstream.New(conn)
	if err != nil {
		return nil, fmt.Errorf("shaping: jetstream: %w", err)
	}
	slots, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: wire.ShapingSlotsBucket(stream), Description: "mailfleet: sessions open to each destination group, one key per session",
		TTL: lease, Storage: jetstream.MemoryStorage, Replicas: max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("shaping: slots bucket: %w", err)
	}
	state, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: wire.ShapingStateBucket(stream), Description: "mailfleet: destination groups' messages per minute and pauses",
		TTL: stateTTL, Storage: jetstream.FileStorage, Replicas: max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("shaping: state bucket: %w", err)
	}
	return &Fleet{slots: slots, state: state, holder: holder, lease: lease, maxWait: DefaultMaxWait, now: time.Now,
		gates: map[string]chan struct{}{}, paused: map[string]pausedUntil{}}, nil
}

// Acquire admits one message to group g and waits for a session slot for
// it: Admit, then Slot.
func (f *Fleet) Acquire(ctx context.Context, g Rule) (release func(), err error) {
	if err := f.Admit(ctx, g); err != nil {
		return nil, err
	}
	return f.Slot(ctx, g)
}

// Admit takes one of group g's messages of this minute, unless g is
// paused. A *Deferral says why the message cannot go now; any other error
// is ctx's. A message sent on a session kept open from an earlier one is
// admitted without a new slot.
func (f *Fleet) Admit(ctx context.Context, g Rule) error {
	if until := f.pausedUntil(ctx, g.Name); f.now().Before(until) {
		return &Deferral{"4.4.5", fmt.Sprintf("deliveries to %s are paused until %s after it answered 421", g.Name, until.UTC().Format(time.RFC3339))}
	}
	return f.countMessage(ctx, g)
}

// Slot waits for one of group g's session slots, fleet-wide; the returned
// release gives it back, and must be called once the session is closed.
func (f *Fleet) Slot(ctx context.Context, g Rule) (release func(), err error) {
	if g.Limits.MaxConnections <= 0 {
		return func() {}, nil
	}
	wctx, cancel := context.WithTimeout(ctx, f.maxWait)
	defer cancel()
	gate := f.gate(g)
	select {
	case gate <- struct{}{}:
	case <-wctx.Done():
		return nil, f.waitFailed(ctx, g)
	}
	key, value, rev, err := f.takeSlot(wctx, g)
	if err != nil {
		<-gate
		return nil, err
	}
	stop := f.keepLease(key, value, rev)
	return func() {
		rev := stop()
		dctx, cancel := context.WithTimeout(context.Background(), slotWriteTimeout)
		defer cancel()
		// Only this holding's key: one whose lease ran out (a stalled
		// relay) may be another's by now.
		f.slots.Delete(dctx, key, jetstream.LastRevision(rev))
		<-gate
	}, nil
}

// gate bounds this relay's own sessions to g, so that at most
// MaxConnections of its deliveries look for a fleet slot at once.
func (f *Fleet) gate(g Rule) chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.gates[g.Name]
	if !ok || cap(c) != g.Limits.MaxConnections {
		c = make(chan struct{}, g.Limits.MaxConnections)
		f.gates[g.Name] = c
	}
	return c
}

func (f *Fleet) waitFailed(ctx context.Context, g Rule) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return &Deferral{"4.4.5", fmt.Sprintf("all %d connections the fleet may open to %s stayed busy for %s", g.Limits.MaxConnections, g.Name, f.maxWait)}
}

// takeSlot creates one of the group's slot keys, trying them from a random
// one on and again after a short, random pause while all are held. The
// key's value names this holding alone, so that a create whose outcome is
// unknown can be undone without touching another's.
func (f *Fleet) takeSlot(ctx context.Context, g Rule) (key string, value []byte, rev uint64, err error) {
	n := g.Limits.MaxConnections
	value = []byte(f.holder + " " + strconv.FormatUint(f.holdings.Add(1), 10))
	for {
		start := rand.IntN(n)
		for i := range n {
			if ctx.Err() != nil {
				return "", nil, 0, f.waitFailed(context.Background(), g)
			}
			key = "slot." + g.Name + "." + strconv.Itoa((start+i)%n)
			rev, err := f.create(key, value)
			if err == nil {
				return key, value, rev, nil
			}
			if !errors.Is(err, jetstream.ErrKeyExists) {
				f.forget(key, value)
				return "", nil, 0, fmt.Errorf("shaping: take a slot of %s: %w", g.Name, err)
			}
		}
		select {
		case <-ctx.Done():
			return "", nil, 0, f.waitFailed(context.Background(), g)
		case <-time.After(time.Duration(5+rand.IntN(20)) * time.Millisecond):
		}
	}
}

// slotWriteTimeout bounds one write of a slot key.
const slotWriteTimeout = 5 * time.Second

// create writes key unless it exists. It is not cancelled with the wait
// for a slot: a create the server carried out but whose answer nobody
// waited for would leave a slot that no session holds, lost to the whole
// fleet until the bucket's TTL removed it.
func (f *Fleet) create(key string, value []byte) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), slotWriteTimeout)
	defer cancel()
	return f.slots.Create(ctx, key, value)
}

// forget deletes key if a create that failed without an answer (a timeout,
// a lost connection) wrote it after all.
func (f *Fleet) forget(key string, value []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), slotWriteTimeout)
	defer cancel()
	if e, err := f.slots.Get(ctx, key); err == nil && bytes.Equal(e.Value(), value) {
		f.slots.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
	}
}

// keepLease rewrites the slot's key while the session runs, so that the
// bucket's TTL removes it only once its holder is gone; stop returns the
// key's last revision.
func (f *Fleet) keepLease(key string, value []byte, rev uint64) (stop func() uint64) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(f.lease / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				ctx, cancel := context.WithTimeout(context.Background(), slotWriteTimeout)
				if r, err := f.slots.Update(ctx, key, value, rev); err == nil {
					rev = r
				}
				cancel()
			}
		}
	})
	return func() uint64 { close(done); wg.Wait(); return rev }
}

// countMessage takes one of the group's messages of this minute.
func (f *Fleet) countMessage(ctx context.Context, g Rule) error {
	if g.Limits.MaxPerMinute <= 0 {
		return nil
	}
	minute := f.now().UTC().Truncate(time.Minute)
	key := "rate." + g.Name + "." + strconv.FormatInt(minute.Unix()/60, 10)
	for range 20 {
		n, rev, err := f.readCount(ctx, key)
		if err != nil {
			return err
		}
		if n >= g.Limits.MaxPerMinute {
			return &Deferral{"4.4.5", fmt.Sprintf("the fleet sent %s its %d messages of this minute", g.Name, g.Limits.MaxPerMinute)}
		}
		next := []byte(strconv.Itoa(n + 1))
		if rev == 0 {
			_, err = f.state.Create(ctx, key, next)
		} else {
			_, err = f.state.Update(ctx, key, next, rev)
		}
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return &Deferral{"4.4.5", fmt.Sprintf("the count of %s's messages this minute is too contended to take", g.Name)}
}

func (f *Fleet) readCount(ctx context.Context, key string) (int, uint64, error) {
	e, err := f.state.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return 0, 0, nil
	case err != nil:
		return 0, 0, fmt.Errorf("shaping: read %s: %w", key, err)
	}
	n, _ := strconv.Atoi(string(e.Value()))
	return n, e.Revision(), nil
}

// pausedUntil is when g's pause ends (zero: not paused), read at most once
// a second.
func (f *Fleet) pausedUntil(ctx context.Context, group string) time.Time {
	now := f.now()
	f.mu.Lock()
	p, ok := f.paused[group]
	f.mu.Unlock()
	if ok && now.Sub(p.read) < time.Second {
		return p.until
	}
	s, _ := f.suspension(ctx, group)
	f.mu.Lock()
	f.paused[group] = pausedUntil{until: s.Until, read: now}
	f.mu.Unlock()
	return s.Until
}

func (f *Fleet) suspension(ctx context.Context, group string) (suspension, uint64) {
	var s suspension
	e, err := f.state.Get(ctx, "pause."+group)
	if err != nil || json.Unmarshal(e.Value(), &s) != nil {
		return suspension{}, 0
	}
	return s, e.Revision()
}

// Pause stops the fleet's sessions to g after it answered 421: for
// DefaultSuspend the first time, twice as long for each 421 that follows
// a pause, up to MaxSuspend.
func (f *Fleet) Pause(ctx context.Context, g Rule, reason string) {
	s, rev := f.suspension(ctx, g.Name)
	now := f.now()
	if now.Before(s.Until) {
		return // paused already, by this relay or another
	}
	d := min(DefaultSuspend<<min(s.Level, 10), MaxSuspend)
	next, _ := json.Marshal(suspension{Until: now.Add(d), Level: s.Level + 1, Reason: reason})
	if rev == 0 {
		f.state.Create(ctx, "pause."+g.Name, next)
	} else {
		f.state.Update(ctx, "pause."+g.Name, next, rev)
	}
	f.mu.Lock()
	delete(f.paused, g.Name)
	f.mu.Unlock()
}

// Delivered resets g's pauses once it takes mail again.
func (f *Fleet) Delivered(ctx context.Context, g Rule) {
	f.mu.Lock()
	p, ok := f.paused[g.Name]
	f.mu.Unlock()
	if ok && p.until.IsZero() && f.now().Sub(p.read) < time.Second {
		return // no pause on record a moment ago
	}
	if s, rev := f.suspension(ctx, g.Name); rev != 0 && s.Level > 0 && !f.now().Before(s.Until) {
		f.state.Delete(ctx, "pause."+g.Name, jetstream.LastRevision(rev))
	}
}

// Guard is the fleet's shaping once its buckets are open, and none until
// then: a relay that starts while JetStream cannot make them delivers
// bounded by its own per-domain limit meanwhile, rather than not at all.
type Guard struct {
	fleet atomic.Pointer[Fleet]
}

// Attach starts shaping with f.
func (g *Guard) Attach(f *Fleet) { g.fleet.Store(f) }

// Admit is Fleet.Admit once attached.
func (g *Guard) Admit(ctx context.Context, r Rule) error {
	if f := g.fleet.Load(); f != nil {
		return f.Admit(ctx, r)
	}
	return nil
}

// Slot is Fleet.Slot once attached.
func (g *Guard) Slot(ctx context.Context, r Rule) (func(), error) {
	if f := g.fleet.Load(); f != nil {
		return f.Slot(ctx, r)
	}
	return func() {}, nil
}

// Pause is Fleet.Pause once attached.
func (g *Guard) Pause(ctx context.Context, r Rule, reason string) {
	if f := g.fleet.Load(); f != nil {
		f.Pause(ctx, r, reason)
	}
}

// Delivered is Fleet.Delivered once attached.
func (g *Guard) Delivered(ctx context.Context, r Rule) {
	if f := g.fleet.Load(); f != nil {
		f.Delivered(ctx, r)
	}
}
