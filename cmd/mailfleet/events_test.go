package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/events"
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

	dir := t.TempDir()
	key, err := wire.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	credsFile := filepath.Join(dir, "credentials.yaml")
	err = credentials.WriteFile(credsFile, []wire.Account{{APIUser: "acme", KeyDigests: []string{wire.Digest(key)},
		Webhooks: []wire.Webhook{{URL: rcv.URL + "/events", Secret: secret}}}})
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "relay.yaml")
	cfg := fmt.Sprintf("hostname: mx.test\nlisteners: [{name: smtp, address: '127.0.0.1:0', authRequiresTLS: false}]\ncredentialsFile: %s\n"+
		"metricsAddress: '%s'\nspoolDir: %s\ndelivery: {localDir: %s}\n"+
		"webhooks: {allowHTTP: true, allowedDestinations: [127.0.0.1/32], batchWait: 50ms}\n",
		credsFile, freeAddr(t), filepath.Join(dir, "spool"), filepath.Join(dir, "out"))
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	relay := startProcess(t, "relay", "--config", cfgFile)
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
