package dispatch

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailfleet/mailfleet/internal/loopback"
	"github.com/mailfleet/mailfleet/internal/smtpsink"
	"github.com/mailfleet/mailfleet/relay/delivery"
	"github.com/mailfleet/mailfleet/relay/queue"
	"github.com/mailfleet/mailfleet/relay/smtpclient"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// TestUpstreamOutage queues messages while the smarthost is down, then
// brings it back: every message is delivered once it returns, through the
// real queue and the real smarthost transport. The outage is 5 s rather
// than a minute because the retry schedule is compressed to 1 s; what is
// tested is the same: deferrals keep the message, and retries find the
// smarthost again.
func TestUpstreamOutage(t *testing.T) {
	const messages = 40
	addr := loopback.FreeAddr(t) // nothing listens here until the sink comes back
	host, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	q, err := queue.Open(context.Background(), queue.Options{Dir: t.TempDir(), AckWait: 10 * time.Second, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	transport, err := delivery.NewSmarthost(delivery.SmarthostConfig{
		Host: host, Port: port, TLS: smtpclient.TLSNone, Hostname: "relay.test",
		DialTimeout: time.Second, Log: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	runDispatcher(t, Config{
		Workers:     4,
		Backoff:     delivery.Backoff{Schedule: []time.Duration{time.Second}, Lifetime: time.Hour},
		Destination: "test-smarthost",
	}, Deps{Queue: q, Spool: q, Transport: transport, DSN: fakeDSN, IDs: &counter{}, Registerer: reg, Log: log},
		nil, func() { transport.Close(); q.Close() })

	for i := range messages {
		id := fmt.Sprintf("outage-%03d", i)
		w, err := q.Begin(context.Background(), spool.Envelope{
			ID: id, APIUser: "acme", From: "app@acme.example", To: []string{"user@example.net"}, ReceivedAt: time.Now().UTC(),
		})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(w, "Message-Id: <%s@acme.example>\r\nSubject: %s\r\n\r\nbody of %s\r\n", id, id, id)
		if err := w.Commit(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	retries := func() float64 {
		return testutil.ToFloat64(must(reg, "deferred")) // deferred attempts of this destination
	}
	waitFor(t, "deliveries to be deferred while the smarthost is down", 30*time.Second, func() bool { return retries() >= messages })
	time.Sleep(5 * time.Second)
	if n := testutil.ToFloat64(must(reg, "delivered")); n != 0 {
		t.Fatalf("%v delivered while the smarthost was down", n)
	}

	sink := smtpsink.StartAt(t, addr)
	waitFor(t, "every message to arrive after the smarthost returned", 60*time.Second, func() bool {
		return len(unique(sink.Messages())) == messages
	})
	waitFor(t, "the queue to empty", 30*time.Second, func() bool { return depth(t, q) == 0 })
	for id, body := range unique(sink.Messages()) {
		if !strings.Contains(body, "body of "+id) {
			t.Errorf("message %s arrived altered:\n%s", id, body)
		}
	}
	t.Logf("%d messages, %v deferred attempts during the outage, %d arrivals (duplicates: %d)",
		messages, retries(), len(sink.Messages()), len(sink.Messages())-messages)
}

// unique maps each test message's id (its Subject) to its data.
func unique(msgs []smtpsink.Message) map[string]string {
	out := map[string]string{}
	for _, m := range msgs {
		data := string(m.Data)
		i := strings.Index(data, "Subject: ")
		if i < 0 {
			continue
		}
		id := data[i+len("Subject: "):]
		id = id[:strings.Index(id, "\r\n")]
		out[id] = data
	}
	return out
}
