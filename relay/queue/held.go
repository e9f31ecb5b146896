package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
)

// heldMin is the record size from which a message is delivered from its
// pack rather than copied out of it. Copied, a large body is written twice
// (the pack, then the split copy, which the atomic batch stages once more);
// held, once, and its pack still shares one sync with the messages
// committed beside it (BenchmarkEndToEnd, 100 KB messages).
const heldMin = 32 << 10

// packCacheBytes bounds the packs kept in memory for delivery.
const packCacheBytes = 16 << 20

// holds reports whether a record is to be delivered from its pack: one
// whose body is in it and large, on a stream that holds them (see
// heldPacksKey). A record made large by its envelope alone (a thousand
// recipients) with its body in parts is not: it has no body to hold.
func (q *Queue) holds(m meta, inline []byte) bool {
	return q.hold.Load() && holdsBody(m, inline)
}

func holdsBody(m meta, inline []byte) bool {
	return m.Parts == 0 && len(inline) >= heldMin
}

// reference is the record put on <prefix>.q for a held one: its metadata
// and where the body is. It is decoded once more before it goes out, so a
// reference the deliverers would refuse is never written.
func (q *Queue) reference(m meta, packSeq uint64, offset int) ([]byte, error) {
	m.Pack = &packRef{Seq: packSeq, Offset: offset}
	r, err := encodeRecord(m, nil)
	if err != nil {
		return nil, err
	}
	if _, _, err := decodeRecord(r); err != nil {
		return nil, fmt.Errorf("reference to message %s in pack %d: %w", m.Envelope.ID, packSeq, err)
	}
	return r, nil
}

// errPackGone says a held pack was purged: the copy naming it was delivered
// already (see heldBody).
var errPackGone = errors.New("pack removed")

// heldBody reads the body of m from its held pack. A pack is purged only
// after every record naming it is done, so a copy whose pack is gone is one
// delivered before a crash made the server forget its acknowledgement; the
// caller drops it, as it drops a copy whose body parts are gone. The body
// is copied out of the pack, so that a delivery keeps its own bytes in
// memory rather than the whole pack.
func (q *Queue) heldBody(ctx context.Context, m meta) ([]byte, error) {
	pack, err := q.packs.get(ctx, m.Pack.Seq, q.readPack)
	if err != nil {
		return nil, err
	}
	body, err := bodyAt(pack, m)
	if errors.Is(err, errCorrupt) {
		// The copy read before may not be what the stream holds at that
		// sequence now (a stream deleted and made again starts its
		// sequences over): the leader's copy decides.
		q.packs.forget(m.Pack.Seq)
		if pack, err = q.leaderPack(ctx, m.Pack.Seq); err != nil {
			return nil, err
		}
		body, err = bodyAt(pack, m)
	}
	if err != nil {
		return nil, err
	}
	return bytes.Clone(body), nil
}

// bodyAt is the body of the record m refers to in pack, which must be that
// message's: a body delivered to another message's recipients would be a
// leak.
func bodyAt(pack []byte, m meta) ([]byte, error) {
	r, err := recordAt(pack, m.Pack.Offset)
	if err != nil {
		return nil, fmt.Errorf("message %s at offset %d of pack %d: %w", m.Envelope.ID, m.Pack.Offset, m.Pack.Seq, err)
	}
	held, body, err := decodeRecord(r)
	if err != nil {
		return nil, fmt.Errorf("message %s in pack %d: %w", m.Envelope.ID, m.Pack.Seq, err)
	}
	if held.Envelope.ID != m.Envelope.ID || held.Parts != 0 || int64(len(body)) != m.Size {
		return nil, fmt.Errorf("%w: pack %d holds %s (%d bytes) at offset %d, not %s (%d bytes)",
			errCorrupt, m.Pack.Seq, held.Envelope.ID, len(body), m.Pack.Offset, m.Envelope.ID, m.Size)
	}
	return body, nil
}

// readPack reads a held pack from any replica (see directGet). Only the
// leader is believed when the answer is not the pack: none (a replica
// behind it), an error (direct gets turned off: a relay of an earlier
// release updated the stream without them), another message.
func (q *Queue) readPack(ctx context.Context, seq uint64) ([]byte, error) {
	dctx, cancel := context.WithTimeout(ctx, publishTimeout)
	subject, data, found, err := q.directGet(dctx, seq)
	cancel()
	if err == nil && found && subject == q.subjHeld {
		return data, nil
	}
	return q.leaderPack(ctx, seq)
}

// leaderPack reads a held pack from the stream's leader.
func (q *Queue) leaderPack(ctx context.Context, seq uint64) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	m, found, err := q.leaderGet(ctx, seq, "")
	switch {
	case err != nil:
		return nil, fmt.Errorf("read pack %d: %w", seq, err)
	case !found:
		return nil, fmt.Errorf("pack %d: %w", seq, errPackGone)
	case m.Subject != q.subjHeld:
		return nil, fmt.Errorf("%w: stream message %d is on %q, not a held pack", errCorrupt, seq, m.Subject)
	}
	return m.Data, nil
}

// packCache keeps the held packs read lately. The records of one pack are
// handed out one after another, to several workers at once, and each would
// otherwise read the whole pack for its own record. A pack's bytes never
// change (a stream sequence is never reused), so nothing cached goes stale.
type packCache struct {
	mu    sync.Mutex
	max   int
	size  int
	order []uint64 // oldest first
	packs map[uint64]*cachedPack
}

type cachedPack struct {
	ready chan struct{} // closed once data or err is set
	data  []byte
	err   error
}

func newPackCache(max int) *packCache {
	return &packCache{max: max, packs: map[uint64]*cachedPack{}}
}

// get returns the pack at seq, reading it with read unless it is cached or
// being read; concurrent callers for one pack share one read.
func (c *packCache) get(ctx context.Context, seq uint64, read func(context.Context, uint64) ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	p, ok := c.packs[seq]
	if !ok {
		p = &cachedPack{ready: make(chan struct{})}
		c.packs[seq] = p
		c.order = append(c.order, seq)
	}
	c.mu.Unlock()
	if ok {
		select {
		case <-p.ready:
			return p.data, p.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// The read is not the caller's alone: others may wait for it.
	data, err := read(context.WithoutCancel(ctx), seq)
	c.mu.Lock()
	p.data, p.err = data, err
	close(p.ready)
	if err != nil {
		// The next caller tries again.
		c.drop(seq, p)
	} else if c.packs[seq] == p {
		c.size += len(data)
		c.evict()
	}
	c.mu.Unlock()
	return data, err
}

// forget drops a pack, unless it is being read.
func (c *packCache) forget(seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.packs[seq]; ok {
		c.dropRead(seq, p)
	}
}

// evict drops the oldest packs read until the cache is within its bound;
// packs still being read are passed over.
func (c *packCache) evict() {
	for i := 0; c.size > c.max && i < len(c.order); {
		seq := c.order[i]
		if !c.dropRead(seq, c.packs[seq]) {
			i++
		}
	}
}

// dropRead removes p and its bytes from the count, unless it is still
// being read; it reports whether it did.
func (c *packCache) dropRead(seq uint64, p *cachedPack) bool {
	select {
	case <-p.ready:
		c.size -= len(p.data)
		c.drop(seq, p)
		return true
	default:
		return false
	}
}

// drop removes p, if it is still the entry for seq: a failed read's entry
// may have been evicted and replaced by a newer read meanwhile.
func (c *packCache) drop(seq uint64, p *cachedPack) {
	if c.packs[seq] != p {
		return
	}
	delete(c.packs, seq)
	for i, s := range c.order {
		if s == seq {
			c.order = append(c.order[:i], c.order[i+1:]...)
			return
		}
	}
}

// heldMark is what one reap saw, in this order: the split consumer's ack
// floor, then the last message on <prefix>.q. Every record naming a held
// pack at or below splitFloor was stored before the splitter acknowledged
// that pack, so at or below lastQueued; once the delivery consumer's ack
// floor reaches lastQueued, every one of them is done and those packs can
// be purged.
type heldMark struct {
	splitFloor, lastQueued uint64
}

// maxHeldMarks bounds the marks kept while delivery stands still (one
// message held for long keeps the delivery ack floor where it is). Beyond
// it every other mark is dropped, the oldest kept: one dropped only delays
// a purge.
const maxHeldMarks = 64

// heldFloor adds a mark and returns the highest split floor whose packs
// can be purged now that the delivery ack floor is deliverFloor (0: none).
func (q *Queue) heldFloor(mark heldMark, deliverFloor uint64) uint64 {
	if n := len(q.marks); n == 0 || mark.splitFloor > q.marks[n-1].splitFloor {
		q.marks = append(q.marks, mark)
	}
	var floor uint64
	used := 0
	for _, m := range q.marks {
		if m.lastQueued > deliverFloor {
			break
		}
		floor, used = m.splitFloor, used+1
	}
	q.marks = q.marks[used:]
	if len(q.marks) > maxHeldMarks {
		kept := q.marks[:0]
		for i, m := range q.marks {
			if i%2 == 0 || i == len(q.marks)-1 {
				kept = append(kept, m)
			}
		}
		q.marks = kept
	}
	return floor
}
