package delivery

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/internal/natstest"
	"github.com/mailfleet/mailfleet/relay/shaping"
)

// TestKeptSessionsLeaveNoSlots: three relays keep sessions for a group
// with more deliveries than slots, so deliveries waiting for a slot are
// constantly handed sessions instead. Once the relays are closed, every
// slot of the group is given back: none is left for the bucket's TTL to
// remove. (Handing a session over used to cancel the waiting delivery's
// slot request mid-way, and the server kept slots nobody held: 2–3 of 4
// after 600 messages.)
func TestKeptSessionsLeaveNoSlots(t *testing.T) {
	const total = 600
	sink := startSink(t, sinkOptions{ip: "127.0.0.2", countOnly: true, maxSessions: 4})
	zone := startDNS(t, "keep.example. 60 IN MX 10 mx.keep.example.", "mx.keep.example. 60 IN A 127.0.0.2")
	rules := shaping.WithDefaults([]shaping.Rule{{Name: "keep", Domains: []string{"keep.example"},
		Limits: shaping.Limits{MaxConnections: 4, MaxMessagesPerConnection: 5}}})
	url := natstest.Start(t)
	relays := shapedRelaysOf(t, url, 3, zone, sink.port(), rules)
	start := time.Now()
	drive(t, ctxFor(t), relays, total, "keep.example", func() {}).Wait()
	t.Logf("driven in %s", time.Since(start))
	for _, m := range relays {
		m.Close()
	}
	t.Logf("closed in %s", time.Since(start))
	if sink.accepted.Load() != total || sink.mostActive.Load() > 4 || sink.refused.Load() > 0 {
		t.Fatalf("delivered %d of %d, %d sessions at once, %d answered 421", sink.accepted.Load(), total, sink.mostActive.Load(), sink.refused.Load())
	}
	if left := slotKeys(t, url); len(left) > 0 {
		t.Fatalf("%d messages in %d sessions; slots left after the relays closed: %v", total, sink.conns.Load(), left)
	}
}

func slotKeys(t *testing.T, url string) []string {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), wire.ShapingSlotsBucket("MAILFLEET"))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for k := range keys.Keys() {
		out = append(out, k)
	}
	return out
}

// TestKeptSessionsStayInTheirGroup: two groups whose domains share an MX
// host. A session kept for one group's mail holds that group's slot and
// carries only its mail: the other group's message opens its own session
// under its own slot, rather than riding on (and around the limits of)
// the first's.
func TestKeptSessionsStayInTheirGroup(t *testing.T) {
	sink := startSink(t, sinkOptions{ip: "127.0.0.2", countOnly: true})
	zone := startDNS(t,
		"a.example. 60 IN MX 10 mx.shared.example.", "b.example. 60 IN MX 10 mx.shared.example.",
		"mx.shared.example. 60 IN A 127.0.0.2")
	keep := shaping.Limits{MaxConnections: 1, MaxMessagesPerConnection: 10}
	rules := shaping.WithDefaults([]shaping.Rule{
		{Name: "a", Domains: []string{"a.example"}, Limits: keep},
		{Name: "b", Domains: []string{"b.example"}, Limits: keep},
	})
	m := shapedRelays(t, 1, zone, sink.port(), rules)[0]
	body := []byte("Subject: x\r\n\r\nhi\r\n")
	for i, rcpt := range []string{"x@a.example", "x@b.example", "y@a.example", "y@b.example"} {
		if rs := m.Deliver(ctxFor(t), message("m"+strconv.Itoa(i), body, rcpt)); rs[0].Outcome != Delivered {
			t.Fatalf("%s: %+v", rcpt, rs)
		}
	}
	if got := sink.conns.Load(); got != 2 {
		t.Fatalf("%d sessions for two groups' messages to a host they share, want one per group", got)
	}
}

// TestPutHandsToOneWaiter: a session put back goes to the delivery that
// waited longest for its host, and wakes it alone; a delivery that looks
// for a session and finds none is registered in the same step, so a put
// between the two is not missed.
func TestPutHandsToOneWaiter(t *testing.T) {
	p := newIdleSessions(DefaultSessionIdle)
	woken := map[int]int{}
	var ws []*waiter
	for i := range 3 {
		s, w := p.takeOrWait("k", func() { woken[i]++ })
		if s != nil {
			t.Fatal("a session from an empty pool")
		}
		ws = append(ws, w)
	}
	s := &mxSession{key: "k"}
	if !p.put(s) {
		t.Fatal("put refused by an open pool")
	}
	if fmt.Sprint(woken) != "map[0:1]" {
		t.Fatalf("woken %v, want the first waiter once", woken)
	}
	if got := p.leave("k", ws[0]); got != s || !got.reused {
		t.Fatalf("the first waiter was handed %v", got)
	}
	for _, w := range ws[1:] {
		if got := p.leave("k", w); got != nil {
			t.Fatalf("a waiter not woken was handed %v", got)
		}
	}
	if len(p.waiting) != 0 || len(p.byKey) != 0 {
		t.Fatalf("left behind: %d keys waited for, %d kept", len(p.waiting), len(p.byKey))
	}
}
