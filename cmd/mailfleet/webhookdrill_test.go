package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/events"
	"github.com/mailfleet/mailfleet/relay/webhook"
)

// The webhook drill's size: `make test` runs a short one; `make
// webhook-drill` (part of make test-e2e) the issue's 2,000 messages with the
// receiver down for 60 s.
var (
	drillMessages = envInt("MAILFLEET_WEBHOOK_DRILL_MESSAGES", 300)
	drillDown     = time.Duration(envInt("MAILFLEET_WEBHOOK_DRILL_DOWN_SECONDS", 8)) * time.Second
)

// TestWebhookReceiverDown is the events drill: messages are sent at a
// steady pace while the webhook receiver is down for drillDown in the
// middle of the run; afterwards the receiver must hold the queued and
// delivered event of every message, each event id at least once. Copies
// are allowed — every event carries an id that makes them idempotent —
// and counted.
func TestWebhookReceiverDown(t *testing.T) {
	const secret = "whsec-drill-0123456789abcdef"
	rcv := newDrillReceiver(t, secret)
	key, relay := startWebhookRelay(t, rcv.url()+"/events", secret)
	smtpAddr := relay.waitLog(t, "listening", "listener", "smtp")["address"].(string)
	metrics := relay.waitLog(t, "relay started")["metrics"].(string)

	// The run lasts about twice the outage, which starts a quarter of the
	// way in: events are produced before, during and after it.
	pace := 2 * drillDown / time.Duration(drillMessages)
	downAt, upAt := drillMessages/4, drillMessages/4+int(drillDown/pace)
	c := dialLogin(t, smtpAddr, "acme", key)
	queueIDs := make([]string, 0, drillMessages)
	var returned time.Time
	tick := time.NewTicker(pace)
	defer tick.Stop()
	for i := range drillMessages {
		switch i {
		case downAt:
			rcv.down(t)
		case upAt:
			rcv.up(t)
			returned = time.Now()
		}
		queueIDs = append(queueIDs, sendOne(c, i))
		<-tick.C
	}
	if returned.IsZero() {
		rcv.up(t)
		returned = time.Now()
	}
	c.expectPrefix("QUIT", "221 ")

	caughtUp := rcv.waitFor(t, queueIDs, drillDown+3*time.Minute)
	failed := metricSample(t, "http://"+metrics+"/metrics", `mailfleet_webhook_events_posted_total{result="error"}`)
	relay.stop(t)
	unique, copies, bad := rcv.totals()
	t.Logf("webhook drill: %d messages over %s, receiver down %s; %d distinct events received, %d copies, "+
		"%d events in failed POSTs during the outage, every event in %s after the receiver returned",
		drillMessages, (time.Duration(drillMessages) * pace).Round(time.Second), drillDown, unique, copies, int(failed), caughtUp.Sub(returned).Round(time.Second))
	if unique != 2*drillMessages || bad != 0 {
		t.Fatalf("%d distinct events for %d messages, %d POSTs with a bad signature or body", unique, drillMessages, bad)
	}
	if failed == 0 {
		t.Fatal("no POST failed: the receiver was never down while events were sent")
	}
}

// startWebhookRelay starts the relay binary with one account, acme, whose
// webhook is hookURL, and returns the account's key.
func startWebhookRelay(t *testing.T, hookURL, secret string) (string, *process) {
	t.Helper()
	dir := t.TempDir()
	key, cfgFile := writeWebhookRelay(t, dir, hookURL, secret, "{localDir: "+filepath.Join(dir, "out")+"}")
	return key, startProcess(t, "relay", "--config", cfgFile)
}

// writeWebhookRelay writes into dir the credentials and configuration of
// a relay with one account, acme, whose webhook is hookURL, delivering as
// delivery (YAML) says; it returns the account's key and the config file.
func writeWebhookRelay(t *testing.T, dir, hookURL, secret, delivery string) (string, string) {
	t.Helper()
	key, err := wire.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	credsFile := filepath.Join(dir, "credentials.yaml")
	err = credentials.WriteFile(credsFile, []wire.Account{{APIUser: "acme", KeyDigests: []string{wire.Digest(key)},
		Webhooks: []wire.Webhook{{URL: hookURL, Secret: secret}}}})
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "relay.yaml")
	cfg := fmt.Sprintf("hostname: mx.test\nlisteners: [{name: smtp, address: '127.0.0.1:0', authRequiresTLS: false}]\ncredentialsFile: %s\n"+
		"metricsAddress: '%s'\nspoolDir: %s\ndelivery: %s\n"+
		"webhooks: {allowHTTP: true, allowedDestinations: [127.0.0.1/32], batchWait: 100ms}\n",
		credsFile, freeAddr(t), filepath.Join(dir, "spool"), delivery)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return key, cfgFile
}

// sendOne sends message i in the open session and returns its queue id.
func sendOne(c *lineConn, i int) string {
	c.t.Helper()
	c.expectPrefix("MAIL FROM:<me@example.com>", "250 ")
	c.expectPrefix(fmt.Sprintf("RCPT TO:<r%d@example.com>", i), "250 ")
	c.expectPrefix("DATA", "354 ")
	c.write(fmt.Sprintf("Subject: drill %d\r\n\r\nmessage %d\r\n", i, i))
	reply := c.cmd(".")
	id, ok := strings.CutSuffix(strings.TrimPrefix(reply, "250 2.0.0 #"), "#Queued")
	if !ok {
		c.t.Fatalf("message %d: %q", i, reply)
	}
	return id
}

// drillReceiver is a webhook endpoint that can be taken down (its port
// closed: connections refused) and brought back on the same address.
type drillReceiver struct {
	secret string
	addr   string
	srv    *http.Server

	mu    sync.Mutex
	seen  map[string]int             // event id: times received
	got   map[string]map[string]bool // queue id: event types
	types map[events.Type]int        // events received by type
	bad   int
}

func newDrillReceiver(t *testing.T, secret string) *drillReceiver {
	r := &drillReceiver{secret: secret, addr: freeAddr(t), seen: map[string]int{}, got: map[string]map[string]bool{}, types: map[events.Type]int{}}
	r.up(t)
	t.Cleanup(func() { r.srv.Close() })
	return r
}

func (r *drillReceiver) url() string { return "http://" + r.addr }

// up listens on the receiver's address again. The port was the
// receiver's a moment ago; another process taking it meanwhile is
// retried for a while rather than failing the drill at once.
func (r *drillReceiver) up(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ln, err := net.Listen("tcp", r.addr)
		if err == nil {
			r.srv = &http.Server{Handler: http.HandlerFunc(r.receive), ReadHeaderTimeout: 10 * time.Second}
			go r.srv.Serve(ln)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("receiver back on %s: %v", r.addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// down closes the listener and every open connection.
func (r *drillReceiver) down(t *testing.T) {
	t.Helper()
	if err := r.srv.Close(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		t.Fatal(err)
	}
}

func (r *drillReceiver) receive(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	var evs []events.Event
	if err == nil {
		err = webhook.Verify(r.secret, req.Header.Get(webhook.SignatureHeader), body, time.Now())
	}
	if err == nil {
		err = json.Unmarshal(body, &evs)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.bad++
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	for _, ev := range evs {
		r.seen[ev.ID]++
		r.types[ev.Type]++
		if r.got[ev.QueueID] == nil {
			r.got[ev.QueueID] = map[string]bool{}
		}
		r.got[ev.QueueID][string(ev.Type)] = true
	}
}

// waitFor waits until every queue id has its queued and delivered events,
// and returns when they were all there.
func (r *drillReceiver) waitFor(t *testing.T, queueIDs []string, limit time.Duration) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for {
		missing := r.missing(queueIDs)
		if missing == 0 {
			return time.Now()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d of %d messages lack their queued or delivered event %s after the receiver came back", missing, len(queueIDs), limit)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (r *drillReceiver) missing(queueIDs []string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, id := range queueIDs {
		if !r.got[id][string(events.Queued)] || !r.got[id][string(events.Delivered)] {
			n++
		}
	}
	return n
}

// totals are the distinct event ids received, the copies beyond the
// first, and the POSTs refused.
func (r *drillReceiver) totals() (unique, copies, bad int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.seen {
		unique++
		copies += n - 1
	}
	return unique, copies, r.bad
}

// metricSample reads the value of one sample, name and labels as the
// /metrics page spells them; 0 when the page has none.
func metricSample(t *testing.T, url, sample string) float64 {
	t.Helper()
	_, body := httpStatus(t, url)
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return 0
}
