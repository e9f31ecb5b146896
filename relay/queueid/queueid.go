// Package queueid makes the ids the relay answers with in `250 2.0.0 #<id>#Queued`.
//
// An id is unique across the fleet and sorts by time as a plain string, like
// the seeds' `1426390015358_15_6484_8661.sc-10_10_127_51-inbound`:
//
//	<unix milliseconds, 13 digits>_<sequence, 8 digits>_<process tag>.<node>
//
// The sequence is per process and never repeats while it runs; the process tag
// is random per start, so a pod that restarts within the same millisecond
// still makes new ids; the node (pod name) keeps pods apart.
package queueid

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// Generator makes queue ids. It is safe for concurrent use.
type Generator struct {
	prefix string // "_<process tag>.<node>"
	seq    atomic.Uint64
	now    func() time.Time
}

// New returns a generator for node (a pod or host name); characters outside
// [A-Za-z0-9-] are replaced so the id stays a safe file name and SMTP text.
func New(node string) (*Generator, error) {
	tag := make([]byte, 3)
	if _, err := rand.Read(tag); err != nil {
		return nil, fmt.Errorf("queue id process tag: %w", err)
	}
	return &Generator{
		prefix: "_" + hex.EncodeToString(tag) + "." + sanitize(node),
		now:    time.Now,
	}, nil
}

// Next returns a new id.
func (g *Generator) Next() string {
	seq := g.seq.Add(1) % 100_000_000
	return fmt.Sprintf("%013d_%08d%s", g.now().UnixMilli(), seq, g.prefix)
}

// Time returns the time an id was made, to the millisecond.
func Time(id string) (time.Time, error) {
	var ms int64
	if _, err := fmt.Sscanf(id, "%013d_", &ms); err != nil {
		return time.Time{}, fmt.Errorf("parse queue id %q: %w", id, err)
	}
	return time.UnixMilli(ms), nil
}

func sanitize(node string) string {
	if node == "" {
		node = "local"
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-':
			return r
		}
		return '-'
	}, node)
}
