package shaping

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailfleet/mailfleet/internal/natstest"
)

// fleetOf opens n relays' Fleets on one JetStream, each on a connection
// of its own, as n pods do.
func fleetOf(t *testing.T, n int) []*Fleet {
	return fleetWithLease(t, n, leaseTTL)
}

// fleetWithLease is fleetOf with a shorter lease, for a test that waits
// for one to expire.
func fleetWithLease(t *testing.T, n int, lease time.Duration) []*Fleet {
	t.Helper()
	url := natstest.Start(t)
	var out []*Fleet
	for i := range n {
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		f, err := open(context.Background(), nc, "MAILFLEET", 1, "relay-"+string(rune('a'+i)), lease)
		if err != nil {
			t.Fatal(err)
		}
		f.maxWait = 10 * time.Second
		out = append(out, f)
	}
	return out
}

// TestFleetBoundsConcurrency: three relays, many deliveries each, never
// more sessions to a group at once than its MaxConnections.
func TestFleetBoundsConcurrency(t *testing.T) {
	fleet := fleetOf(t, 3)
	g := Rule{Name: "sink", Limits: Limits{MaxConnections: 2}}
	var open, most, done atomic.Int64
	var wg sync.WaitGroup
	for i := range 60 {
		f := fleet[i%3]
		wg.Go(func() {
			release, err := f.Acquire(context.Background(), g)
			if err != nil {
				t.Error(err)
				return
			}
			n := open.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			time.Sleep(2 * time.Millisecond)
			open.Add(-1)
			release()
			done.Add(1)
		})
	}
	wg.Wait()
	if most.Load() > 2 || done.Load() != 60 {
		t.Fatalf("%d sessions at once (want at most 2), %d of 60 done", most.Load(), done.Load())
	}
}

// TestFleetSlotOfADeadRelay: a relay that dies holding a slot (its lease
// is not kept any more) gives it back within the lease's TTL; a slot
// whose holder lives is kept past it.
func TestFleetSlotOfADeadRelay(t *testing.T) {
	const lease = 3 * time.Second
	fleet := fleetWithLease(t, 2, lease)
	g := Rule{Name: "one", Limits: Limits{MaxConnections: 1}}
	// The dead relay's slot: taken, never kept, never released.
	if _, _, _, err := fleet[0].takeSlot(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	fleet[1].maxWait = lease + 15*time.Second
	start := time.Now()
	release, err := fleet[1].Acquire(context.Background(), g)
	if err != nil {
		t.Fatal(err)
	}
	release()
	if waited := time.Since(start); waited < lease/2 {
		t.Fatalf("took a held slot after %v", waited)
	}

	// A live holder keeps its lease past the TTL.
	release, err = fleet[0].Acquire(context.Background(), g)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	fleet[1].maxWait = 2 * lease
	var deferral *Deferral
	if _, err := fleet[1].Acquire(context.Background(), g); !errors.As(err, &deferral) {
		t.Fatalf("took a slot whose holder keeps its lease: %v", err)
	}
}

// TestFleetSlotWaitCancelled: a wait for a slot given up at any moment,
// as a delivery does when a kept session comes free first, leaves no slot
// behind. (A create cancelled while in flight used to be carried out by
// the server with nobody told: the slot was lost to the fleet until the
// bucket's TTL.)
func TestFleetSlotWaitCancelled(t *testing.T) {
	f := fleetWithLease(t, 1, time.Minute)[0]
	g := Rule{Name: "cancelled", Limits: Limits{MaxConnections: 1000}}
	var cancelledDuring int
	for range 2000 {
		ctx, cancel := context.WithCancel(context.Background())
		timer := time.AfterFunc(time.Duration(rand.IntN(400))*time.Microsecond, cancel)
		release, err := f.Slot(ctx, g)
		if ctx.Err() != nil {
			cancelledDuring++
		}
		if err == nil {
			release()
		}
		timer.Stop()
		cancel()
	}
	keys, err := f.slots.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	left := 0
	for range keys.Keys() {
		left++
	}
	if left > 0 {
		t.Fatalf("%d slots left with no holder after 2,000 waits, %d of them given up while under way", left, cancelledDuring)
	}
	if cancelledDuring == 0 {
		t.Fatal("no wait was given up while under way: the test proves nothing")
	}
}

// TestFleetPerMinute: the fleet's messages of a minute stop at the limit.
func TestFleetPerMinute(t *testing.T) {
	fleet := fleetOf(t, 2)
	g := Rule{Name: "rate", Limits: Limits{MaxPerMinute: 5}}
	ok := 0
	var deferral *Deferral
	for i := range 8 {
		release, err := fleet[i%2].Acquire(context.Background(), g)
		switch {
		case err == nil:
			ok++
			release()
		case !errors.As(err, &deferral):
			t.Fatal(err)
		}
	}
	// A minute may turn during the loop and give a few more.
	if ok < 5 || ok > 7 || deferral == nil {
		t.Fatalf("%d of 8 taken within a minute's limit of 5 (deferral %v)", ok, deferral)
	}
}

// TestFleetPause: a 421 pauses the group for every relay, longer after
// each pause, and a delivery after it resets the length.
func TestFleetPause(t *testing.T) {
	fleet := fleetOf(t, 2)
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	for _, f := range fleet {
		f.now = clock
	}
	g := Rule{Name: "busy", Limits: Limits{MaxConnections: 2}}
	ctx := context.Background()
	fleet[0].Pause(ctx, g, "421 4.7.0 try later")
	var deferral *Deferral
	if _, err := fleet[1].Acquire(ctx, g); !errors.As(err, &deferral) {
		t.Fatalf("another relay during the pause: %v", err)
	}
	advance(DefaultSuspend + 2*time.Second)
	release, err := fleet[1].Acquire(ctx, g)
	if err != nil {
		t.Fatalf("after the pause: %v", err)
	}
	release()
	fleet[1].Pause(ctx, g, "421 again")
	s, _ := fleet[0].suspension(ctx, "busy")
	if got := s.Until.Sub(clock()); got != 2*DefaultSuspend {
		t.Fatalf("second pause %v, want %v", got, 2*DefaultSuspend)
	}
	advance(2*DefaultSuspend + 2*time.Second)
	fleet[0].Delivered(ctx, g)
	if s, rev := fleet[1].suspension(ctx, "busy"); rev != 0 {
		t.Fatalf("a delivery did not reset the pauses: %+v", s)
	}
}
