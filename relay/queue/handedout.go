package queue

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
)

// handedOutFile, in an embedded queue's directory, holds the highest
// stream sequence of <prefix>.q that the relay handed to a worker.
const handedOutFile = "handed-out"

// handedOut tells an embedded queue which messages an earlier process
// handed out, for mailfleet_queue_redeliveries_total.
//
// JetStream's NumDelivered cannot tell after a crash of the embedded
// server: the server writes a consumer's state (what it delivered, what
// was acknowledged) in the background, at most every 100 ms. A relay
// SIGKILLed within that time restarts with a consumer that forgot the last
// messages it handed out; they come again with NumDelivered 1, as if new,
// though their recipients may have them already. Killed while delivering
// at full speed, the relay's redeliveries were almost all of that kind, and
// the metric stayed at 0.
//
// A consumer hands out new messages in stream order, so every message at
// or below the highest sequence an earlier process handed out was handed
// out before, whatever the server remembers. That one number is written to
// a file at each hand-out that raises it, without a sync: a write survives
// SIGKILL, and a power cut costs a count, never a message. An external
// JetStream outlives the relay and keeps NumDelivered right, so it needs
// no file (a nil *handedOut).
type handedOut struct {
	mu     sync.Mutex
	f      *os.File
	high   uint64 // the highest sequence in the file
	before uint64 // the highest sequence earlier processes handed out
}

// openHandedOut reads path, which may not exist yet. lastSeq is the queue
// stream's last sequence: a higher number in the file is from a store that
// was removed, and is forgotten.
func openHandedOut(path string, lastSeq uint64) (*handedOut, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open the queue's hand-out record: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(f, 64))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read the queue's hand-out record %s: %w", path, err)
	}
	// An empty or damaged file only costs counts of redeliveries.
	before, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if before > lastSeq {
		before = 0
	}
	h := &handedOut{f: f, before: before}
	// Rewritten even when unchanged, so a forgotten number leaves the file.
	if err := h.write(before); err != nil {
		f.Close()
		return nil, err
	}
	return h, nil
}

// handedBefore reports whether an earlier process handed out seq.
func (h *handedOut) handedBefore(seq uint64) bool {
	return h != nil && seq <= h.before
}

// record notes that seq is being handed out.
func (h *handedOut) record(seq uint64) error {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if seq <= h.high {
		return nil
	}
	return h.write(seq)
}

func (h *handedOut) write(seq uint64) error {
	// Fixed width, one write at offset 0: a process killed during it
	// leaves the old number or the new one.
	if _, err := h.f.WriteAt([]byte(fmt.Sprintf("%020d\n", seq)), 0); err != nil {
		return fmt.Errorf("record hand-out of stream message %d: %w", seq, err)
	}
	h.high = seq
	return nil
}

func (h *handedOut) close() error {
	if h == nil {
		return nil
	}
	return h.f.Close()
}
