package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"iter"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/events"
	"github.com/mailfleet/mailfleet/relay/queue"
	"github.com/mailfleet/mailfleet/relay/webhook"
)

// TestRelayPostsEventsToWebhooks: the relay binary, with an account whose
// credentials name a webhook, posts the message's queued and delivered
// events there, signed with the webhook's secret.
func TestRelayPostsEventsToWebhooks(t *testing.T) {
	const secret = "whsec-relay-test-0123456789"
	var mu sync.Mutex
	got := map[events.Type]events.Event{}
	badSig := 0
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if webhook.Verify(secret, r.Header.Get(webhook.SignatureHeader), body, time.Now()) != nil {
			badSig++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var evs []events.Event
		json.Unmarshal(body, &evs)
		for _, ev := range evs {
			got[ev.Type] = ev
		}
	}))
	defer rcv.Close()

	key, relay := startWebhookRelay(t, rcv.URL+"/events", secret)
	smtpAddr := relay.waitLog(t, "listening", "listener", "smtp")["address"].(string)
	c := dialLogin(t, smtpAddr, "acme", key)
	c.expectPrefix("MAIL FROM:<me@example.com>", "250 ")
	c.expectPrefix("RCPT TO:<you@example.com>", "250 ")
	c.expectPrefix("DATA", "354 ")
	c.write("Subject: events\r\n\r\nhello\r\n")
	reply := c.cmd(".")
	c.expectPrefix("QUIT", "221 ")
	queueID := strings.TrimSuffix(strings.TrimPrefix(reply, "250 2.0.0 #"), "#Queued")

	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events received: %v (bad signatures: %d)", got, badSig)
		}
		time.Sleep(20 * time.Millisecond)
	}
	relay.stop(t)
	mu.Lock()
	defer mu.Unlock()
	for _, typ := range []events.Type{events.Queued, events.Delivered} {
		ev := got[typ]
		if ev.QueueID != queueID || ev.APIUser != "acme" || ev.Recipient != "you@example.com" {
			t.Errorf("%s event %+v for queue id %s", typ, ev, queueID)
		}
	}
	if badSig != 0 {
		t.Errorf("%d POSTs with a bad signature", badSig)
	}
}

// TestDevPostsEventsToURL: `mailfleet dev --events-url` posts the demo
// account's events to a receiver on this machine, signed with the secret
// it records in credentials.env, and says so.
func TestDevPostsEventsToURL(t *testing.T) {
	type post struct {
		signature string
		body      []byte
	}
	posts := make(chan post, 16)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		posts <- post{r.Header.Get(webhook.SignatureHeader), body}
	}))
	defer rcv.Close()

	p := startDevIn(t, t.TempDir(), "--events-url", rcv.URL+"/hooks")
	secret := p.env["MAILFLEET_WEBHOOK_SECRET"]
	if len(secret) < wire.MinWebhookSecret || !strings.Contains(p.stdout.String(), rcv.URL+"/hooks") {
		t.Fatalf("credentials.env has a webhook secret of %d characters; announcement:\n%s", len(secret), p.stdout)
	}
	queueID := sendThroughDevAPI(t, p)

	got := map[events.Type]bool{}
	timeout := time.After(30 * time.Second)
	for !got[events.Queued] || !got[events.Delivered] {
		select {
		case pst := <-posts:
			if err := webhook.Verify(secret, pst.signature, pst.body, time.Now()); err != nil {
				t.Fatalf("a POST does not verify with MAILFLEET_WEBHOOK_SECRET: %v", err)
			}
			var evs []events.Event
			if err := json.Unmarshal(pst.body, &evs); err != nil {
				t.Fatal(err)
			}
			for _, ev := range evs {
				if ev.QueueID == queueID && ev.APIUser == devAPIUser {
					got[ev.Type] = true
				}
			}
		case <-timeout:
			t.Fatalf("events of %s received: %v", queueID, got)
		}
	}
	if strings.Contains(p.stderr.String(), secret) || strings.Contains(p.stdout.String(), secret) {
		t.Fatal("the webhook secret appears in dev's output")
	}
}

// sendThroughDevAPI sends a message through dev's HTTP send API and
// returns its queue id.
func sendThroughDevAPI(t *testing.T, p *devProcess) string {
	t.Helper()
	pem, err := os.ReadFile(p.env["MAILFLEET_CA_FILE"])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequest(http.MethodPost, "https://127.0.0.1:"+p.env["MAILFLEET_API_PORT"]+"/v1/mail/send",
		strings.NewReader(`{"from":"me@example.com","to":["you@example.com"],"subject":"events","text":"hello"}`))
	req.SetBasicAuth(p.env["MAILFLEET_API_USER"], p.env["MAILFLEET_API_KEY"])
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var answer struct {
		MessageID string `json:"messageId"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("send: %d %v", resp.StatusCode, err)
	}
	return answer.MessageID
}

// TestDevRefusesABadEventsURL: a URL the relay could never post to is
// refused before anything starts, saying what is wrong.
func TestDevRefusesABadEventsURL(t *testing.T) {
	for _, u := range []string{"ftp://127.0.0.1/x", "http://user:pass@127.0.0.1/x", "/relative"} {
		_, _, err := prepareDev(devOptions{dataDir: t.TempDir(), eventsURL: u, smtpPort: 0, metricsAddr: "127.0.0.1:0"})
		if err == nil || !strings.Contains(err.Error(), "--events-url") || strings.Contains(err.Error(), "pass") {
			t.Errorf("%s: %v", u, err)
		}
	}
}

// TestWebhooksStartOnceTheirStreamIs: the webhook dispatcher of a relay
// whose events stream does not exist yet does not stop the relay; it
// starts once the stream is there.
func TestWebhooksStartOnceTheirStreamIs(t *testing.T) {
	q, err := queue.Open(context.Background(), queue.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := prometheus.NewRegistry()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runWebhooks(ctx, webhook.Config{QueueStream: q.Stream()}, webhook.Deps{Conn: q.Conn(), Accounts: noAccounts{}, Registerer: reg}, slog.New(slog.DiscardHandler))
	}()
	p, err := events.Open(ctx, events.Options{Conn: q.Conn(), Stream: q.Stream(), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	deadline := time.Now().Add(30 * time.Second)
	for n, _ := testutil.GatherAndCount(reg, "mailfleet_webhooks_disabled"); n == 0; n, _ = testutil.GatherAndCount(reg, "mailfleet_webhooks_disabled") {
		if time.Now().After(deadline) {
			t.Fatal("the dispatcher did not start once the events stream was made")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-done
}

type noAccounts struct{}

func (noAccounts) All() iter.Seq[*wire.Account] { return func(func(*wire.Account) bool) {} }
