package delivery

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailfleet/mailfleet/internal/natstest"
	"github.com/mailfleet/mailfleet/relay/shaping"
)

// shapingDrillMessages is the drill's size: `make test` runs a short one,
// `make shaping-drill` (part of make test-e2e) the 2,000.
func shapingDrillMessages() int {
	if n, err := strconv.Atoi(os.Getenv("MAILFLEET_SHAPING_DRILL_MESSAGES")); err == nil && n > 0 {
		return n
	}
	return 300
}

// TestShapingDrill is the shaping drill: three relays' direct delivery,
// each with its own connection to one JetStream and 20 workers for the
// destination (a pod's per-domain limit), deliver a backlog to
// slow.example, whose MX host takes 2 sessions from the fleet and answers
// 421 to a third. The group's limit of 2 holds for the fleet: the host
// never sees a third session nor answers 421. Meanwhile mail to
// fast.example, another domain on another host, flows: it is all
// delivered while the slow backlog is still being worked off.
func TestShapingDrill(t *testing.T) {
	total := shapingDrillMessages()
	slow := startSink(t, sinkOptions{ip: "127.0.0.2", tls: true, countOnly: true, maxSessions: 2, delay: 5 * time.Millisecond})
	fast := startSink(t, sinkOptions{ip: "127.0.0.3", port: strconv.Itoa(slow.port()), tls: true, countOnly: true})
	zone := startDNS(t,
		"slow.example. 60 IN MX 10 mx.slow.example.", "mx.slow.example. 60 IN A 127.0.0.2",
		"fast.example. 60 IN MX 10 mx.fast.example.", "mx.fast.example. 60 IN A 127.0.0.3")
	rules := shaping.WithDefaults([]shaping.Rule{{Name: "slow", Domains: []string{"slow.example"}, Limits: shaping.Limits{MaxConnections: 2}}})
	relays := shapedRelays(t, 3, zone, slow.port(), rules)

	ctx := ctxFor(t)
	start := time.Now()
	var slowLeft atomic.Int64
	slowLeft.Store(int64(total))
	var slowDone time.Time
	var fastDoneWhileSlowLeft atomic.Int64
	deferred := drive(t, ctx, relays, total, "slow.example", func() {
		if slowLeft.Add(-1) == 0 {
			slowDone = time.Now()
		}
	})
	// The fast domain's mail starts once the slow backlog is under way.
	for slow.accepted.Load() < 10 {
		time.Sleep(time.Millisecond)
	}
	fastDeferred := drive(t, ctx, relays, 60, "fast.example", func() {
		if slowLeft.Load() > 0 {
			fastDoneWhileSlowLeft.Add(1)
		}
	})
	fastDeferred.Wait()
	fastTook := time.Since(start)
	deferred.Wait()
	t.Logf("shaping drill: %d messages to a host taking 2 sessions, from 3 relays with 20 workers each: at most %d sessions at once, "+
		"%d answered 421, %d deliveries deferred by the group's limit and retried, all delivered in %s; 60 messages to another domain, "+
		"%d of them delivered while the backlog lasted, all within %s of the start",
		total, slow.mostActive.Load(), slow.refused.Load(), deferred.n.Load(), slowDone.Sub(start).Round(time.Millisecond),
		fastDoneWhileSlowLeft.Load(), fastTook.Round(time.Millisecond))
	if slow.accepted.Load() != int64(total) || fast.accepted.Load() != 60 {
		t.Fatalf("delivered %d of %d to the slow host, %d of 60 to the fast one", slow.accepted.Load(), total, fast.accepted.Load())
	}
	if slow.mostActive.Load() > 2 || slow.refused.Load() > 0 {
		t.Fatalf("the slow host saw %d sessions at once and answered 421 %d times; the fleet's limit is 2", slow.mostActive.Load(), slow.refused.Load())
	}
	if fastDoneWhileSlowLeft.Load() != 60 {
		t.Fatalf("only %d of the other domain's 60 messages were delivered while the slow backlog lasted", fastDoneWhileSlowLeft.Load())
	}
}

// driven is a backlog being delivered: Wait waits for it, n counts the
// deliveries deferred (and tried again, as the queue would).
type driven struct {
	wg sync.WaitGroup
	n  atomic.Int64
}

func (d *driven) Wait() { d.wg.Wait() }

// drive delivers total messages to domain through relays, 20 workers
// each, trying a deferred one again after a pause, and calls done after
// each delivery.
func drive(t *testing.T, ctx context.Context, relays []*MX, total int, domain string, done func()) *driven {
	d := &driven{}
	work := make(chan int, total)
	for i := range total {
		work <- i
	}
	close(work)
	for r := range len(relays) * 20 {
		m := relays[r%len(relays)]
		d.wg.Go(func() {
			for i := range work {
				msg := message(fmt.Sprintf("%s-%d", domain, i), []byte("Subject: drill\r\n\r\nhi\r\n"), fmt.Sprintf("u%d@%s", i, domain))
				for {
					rs := m.Deliver(ctx, msg)
					if rs[0].Outcome == Delivered {
						break
					}
					if ctx.Err() != nil {
						t.Errorf("%s: %+v", msg.Envelope.ID, rs[0])
						return
					}
					d.n.Add(1)
					time.Sleep(50 * time.Millisecond)
				}
				done()
			}
		})
	}
	return d
}

// TestShapingPausesOn421: a destination that answers 421 pauses its group
// for every relay of the fleet: the next delivery to it waits for the
// queue's retry without a session, while other destinations go on.
func TestShapingPausesOn421(t *testing.T) {
	busy := startSink(t, sinkOptions{ip: "127.0.0.2", countOnly: true})
	busy.mu.Lock()
	busy.dataReply = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Try again later"}
	busy.mu.Unlock()
	other := startSink(t, sinkOptions{ip: "127.0.0.3", port: strconv.Itoa(busy.port()), countOnly: true})
	zone := startDNS(t,
		"busy.example. 60 IN MX 10 mx.busy.example.", "mx.busy.example. 60 IN A 127.0.0.2",
		"other.example. 60 IN MX 10 mx.other.example.", "mx.other.example. 60 IN A 127.0.0.3")
	relays := shapedRelays(t, 2, zone, busy.port(), shaping.WithDefaults([]shaping.Rule{{Name: "busy", Domains: []string{"busy.example"}}}))
	body := []byte("Subject: x\r\n\r\nhi\r\n")
	rs := relays[0].Deliver(ctxFor(t), message("m1", body, "a@busy.example"))
	if rs[0].Code != 421 {
		t.Fatalf("%+v", rs)
	}
	conns := busy.conns.Load()
	rs = relays[1].Deliver(ctxFor(t), message("m2", body, "b@busy.example"))
	if rs[0].Outcome != Deferred || rs[0].Enhanced != "4.4.5" || !strings.Contains(rs[0].Text, "paused") || busy.conns.Load() != conns {
		t.Fatalf("another relay after the 421: %+v (%d connections, %d before)", rs, busy.conns.Load(), conns)
	}
	if rs := relays[1].Deliver(ctxFor(t), message("m3", body, "c@other.example")); rs[0].Outcome != Delivered || other.accepted.Load() != 1 {
		t.Fatalf("another destination during the pause: %+v", rs)
	}
}

// shapedRelays are n relays' direct delivery with rules, each sharing the
// groups' limits through its own connection to one JetStream, as n pods.
func shapedRelays(t *testing.T, n int, zone *dnsServer, port int, rules shaping.Rules) []*MX {
	t.Helper()
	return shapedRelaysOf(t, natstest.Start(t), n, zone, port, rules)
}

// shapedRelaysOf are shapedRelays sharing the JetStream at url.
func shapedRelaysOf(t *testing.T, url string, n int, zone *dnsServer, port int, rules shaping.Rules) []*MX {
	t.Helper()
	var relays []*MX
	for i := range n {
		fleet := openFleet(t, url, fmt.Sprintf("relay-%d", i))
		relays = append(relays, newMXForTest(t, zone, port, func(c *MXConfig) { c.Shaper, c.ShapingRules = fleet, rules }))
	}
	return relays
}

// openFleet is one relay's shaping, on its own connection to url.
func openFleet(t *testing.T, url, holder string) *shaping.Fleet {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	fleet, err := shaping.Open(context.Background(), nc, "MAILFLEET", 1, holder)
	if err != nil {
		t.Fatal(err)
	}
	return fleet
}

// TestShapingKeepsSessions: a group that carries up to 10 messages per
// session. Three relays deliver 200 messages to a host that takes 2
// sessions from the fleet: sessions are kept open between messages (RSET
// between), never more than 10 messages each, and the kept sessions still
// count under the group's 2 — the host never sees a third nor answers 421.
func TestShapingKeepsSessions(t *testing.T) {
	const total, perSession = 200, 10
	sink := startSink(t, sinkOptions{ip: "127.0.0.2", tls: true, countOnly: true, maxSessions: 2})
	zone := startDNS(t, "keep.example. 60 IN MX 10 mx.keep.example.", "mx.keep.example. 60 IN A 127.0.0.2")
	rules := shaping.WithDefaults([]shaping.Rule{{Name: "keep", Domains: []string{"keep.example"},
		Limits: shaping.Limits{MaxConnections: 2, MaxMessagesPerConnection: perSession}}})
	relays := shapedRelays(t, 3, zone, sink.port(), rules)
	drive(t, ctxFor(t), relays, total, "keep.example", func() {}).Wait()
	conns, resets := sink.conns.Load(), sink.resets.Load()
	t.Logf("%d messages in %d sessions (%d RSETs), at most %d at once", total, conns, resets, sink.mostActive.Load())
	if sink.accepted.Load() != total || sink.mostActive.Load() > 2 || sink.refused.Load() > 0 {
		t.Fatalf("delivered %d of %d, %d sessions at once, %d answered 421", sink.accepted.Load(), total, sink.mostActive.Load(), sink.refused.Load())
	}
	if conns < total/perSession {
		t.Fatalf("%d messages in %d sessions: more than %d per session", total, conns, perSession)
	}
	if conns > total/2 || resets == 0 {
		t.Fatalf("%d messages in %d sessions with %d RSETs: sessions were not kept", total, conns, resets)
	}
}

// TestKeptSessionClosedByHost: a host that drops a session while it waits
// for the next message costs that message nothing: it goes on a new
// session.
func TestKeptSessionClosedByHost(t *testing.T) {
	sink := startSink(t, sinkOptions{ip: "127.0.0.2", countOnly: true, readTimeout: 500 * time.Millisecond})
	zone := startDNS(t, "keep.example. 60 IN MX 10 mx.keep.example.", "mx.keep.example. 60 IN A 127.0.0.2")
	rules := shaping.WithDefaults([]shaping.Rule{{Name: "keep", Domains: []string{"keep.example"},
		Limits: shaping.Limits{MaxConnections: 1, MaxMessagesPerConnection: 5}}})
	url := natstest.Start(t)
	metrics := NewMetrics(prometheus.NewRegistry())
	m := newMXForTest(t, zone, sink.port(), func(c *MXConfig) {
		c.Shaper, c.ShapingRules, c.Metrics = openFleet(t, url, "relay-0"), rules, metrics
	})
	body := []byte("Subject: x\r\n\r\nhi\r\n")
	for i, wait := range []time.Duration{0, 0, 1500 * time.Millisecond, 0} {
		time.Sleep(wait)
		if rs := m.Deliver(ctxFor(t), message(fmt.Sprintf("m%d", i), body, "a@keep.example")); rs[0].Outcome != Delivered {
			t.Fatalf("message %d after %s: %+v", i, wait, rs)
		}
	}
	// 2: the first session carried two messages, the host dropped it, the
	// second carried the others. (3 only if a pause between messages on a
	// loaded machine outlasted the host's 500 ms.)
	if got := sink.conns.Load(); got < 2 || got > 3 {
		t.Fatalf("%d sessions for 4 messages, the host dropping the first after its second; want 2", got)
	}
	// The message after the drop was offered on the dropped session too.
	opened, reused := testutil.ToFloat64(metrics.opened.WithLabelValues("mx")), testutil.ToFloat64(metrics.reused.WithLabelValues("mx"))
	if int64(opened) != sink.conns.Load() || opened+reused < 5 {
		t.Fatalf("metrics: %v connections opened (the host saw %d), %v messages on reused ones", opened, sink.conns.Load(), reused)
	}
}

// TestKeptSessionsToTwoHosts: a group whose mail goes to two hosts keeps
// a session to each while it has slots for both, and, with one slot,
// closes the session idle to one host to reach the other.
func TestKeptSessionsToTwoHosts(t *testing.T) {
	for _, c := range []struct{ slots, wantConns int }{{2, 2}, {1, 8}} {
		t.Run(fmt.Sprintf("slots=%d", c.slots), func(t *testing.T) {
			one := startSink(t, sinkOptions{ip: "127.0.0.2", countOnly: true})
			two := startSink(t, sinkOptions{ip: "127.0.0.3", port: strconv.Itoa(one.port()), countOnly: true})
			zone := startDNS(t,
				"one.example. 60 IN MX 10 mx.one.example.", "mx.one.example. 60 IN A 127.0.0.2",
				"two.example. 60 IN MX 10 mx.two.example.", "mx.two.example. 60 IN A 127.0.0.3")
			rules := shaping.WithDefaults([]shaping.Rule{{Name: "pair", Domains: []string{"one.example", "two.example"},
				Limits: shaping.Limits{MaxConnections: c.slots, MaxMessagesPerConnection: 100}}})
			m := shapedRelays(t, 1, zone, one.port(), rules)[0]
			body := []byte("Subject: x\r\n\r\nhi\r\n")
			for i := range 8 {
				rcpt := []string{"a@one.example", "a@two.example"}[i%2]
				if rs := m.Deliver(ctxFor(t), message(fmt.Sprintf("m%d", i), body, rcpt)); rs[0].Outcome != Delivered {
					t.Fatalf("message %d to %s: %+v", i, rcpt, rs)
				}
			}
			if got := one.conns.Load() + two.conns.Load(); got != int64(c.wantConns) {
				t.Fatalf("%d sessions for 8 messages alternating between two hosts with %d slots, want %d", got, c.slots, c.wantConns)
			}
		})
	}
}
