package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// startSink runs the sink on loopback ports of its own and returns its SMTP
// address and HTTP base URL; it stops when the test ends.
func startSink(t *testing.T) (smtpAddr, baseURL string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan [2]net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, "127.0.0.1:0", "127.0.0.1:0", "sink.test", 1<<20, func(s, h net.Addr) { addrs <- [2]net.Addr{s, h} })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	select {
	case a := <-addrs:
		return a[0].String(), "http://" + a[1].String()
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the sink did not start")
	}
	return "", ""
}

func send(t *testing.T, addr, from string, to []string, body string) {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail(from, nil); err != nil {
		t.Fatal(err)
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			t.Fatal(err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, body); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

// request sends a request without a body and returns the response, its
// body read and closed.
func request(t *testing.T, method, url string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp, body
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, body := request(t, http.MethodGet, url)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

func count(t *testing.T, base string) int {
	t.Helper()
	var c struct{ Count int }
	getJSON(t, base+"/count", &c)
	return c.Count
}

func TestSink(t *testing.T) {
	smtpAddr, base := startSink(t)

	if resp, _ := request(t, http.MethodGet, base+"/healthz"); resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz: %s", resp.Status)
	}
	if n := count(t, base); n != 0 {
		t.Fatalf("count before any message = %d", n)
	}

	first := "From: a@example.test\r\nSubject: one\r\nX-Test: 1\r\nX-Test: 2\r\n\r\nhello\r\n.dot line\r\n"
	send(t, smtpAddr, "a@example.test", []string{"b@example.test", "c@example.test"}, first)
	send(t, smtpAddr, "", []string{"d@example.test"}, "Subject: bounce\r\n\r\nbody\r\n")

	var msgs []struct {
		ID       int64
		From     string
		To       []string
		Headers  map[string][]string
		Size     int
		Received time.Time
		Helo     string
	}
	getJSON(t, base+"/messages", &msgs)
	if len(msgs) != 2 {
		t.Fatalf("/messages: %d messages, want 2: %+v", len(msgs), msgs)
	}
	m := msgs[0]
	if m.From != "a@example.test" || strings.Join(m.To, ",") != "b@example.test,c@example.test" {
		t.Errorf("envelope = %q -> %q", m.From, m.To)
	}
	if got := m.Headers["Subject"]; len(got) != 1 || got[0] != "one" {
		t.Errorf("Subject = %q", got)
	}
	if got := m.Headers["X-Test"]; strings.Join(got, ",") != "1,2" {
		t.Errorf("X-Test = %q, want both values in order", got)
	}
	if m.Size != len(first) || m.Helo != "client.test" || time.Since(m.Received) > time.Minute {
		t.Errorf("size %d (want %d), helo %q, received %v", m.Size, len(first), m.Helo, m.Received)
	}
	if msgs[1].From != "" || msgs[1].ID <= m.ID {
		t.Errorf("second message: from %q id %d (first %d)", msgs[1].From, msgs[1].ID, m.ID)
	}

	var filtered []struct{ ID int64 }
	getJSON(t, base+"/messages?to=C@example.test", &filtered)
	if len(filtered) != 1 || filtered[0].ID != m.ID {
		t.Errorf("?to=C@example.test: %+v", filtered)
	}

	_, raw := request(t, http.MethodGet, base+"/messages/"+strconv.FormatInt(m.ID, 10)+"/raw")
	if string(raw) != first {
		t.Errorf("raw = %q, want %q (dot-unstuffed, as sent)", raw, first)
	}

	if n := count(t, base); n != 2 {
		t.Errorf("count = %d, want 2", n)
	}
	if resp, _ := request(t, http.MethodDelete, base+"/messages"); resp.StatusCode != http.StatusNoContent {
		t.Errorf("DELETE /messages: %s", resp.Status)
	}
	if n := count(t, base); n != 0 {
		t.Errorf("count after DELETE = %d", n)
	}
	send(t, smtpAddr, "a@example.test", []string{"b@example.test"}, "Subject: again\r\n\r\nx\r\n")
	getJSON(t, base+"/messages", &msgs)
	if len(msgs) != 1 || msgs[0].ID <= m.ID+1 {
		t.Errorf("after DELETE and one more message: %+v (ids keep growing)", msgs)
	}
}
