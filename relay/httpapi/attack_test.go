package httpapi_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/httpapi"
	"github.com/mailfleet/mailfleet/relay/submission"
)

// documentedStatus is the OpenAPI document's table of error codes.
var documentedStatus = sync.OnceValue(func() map[string]int {
	var doc struct {
		Codes map[string]int `json:"x-error-codes"`
	}
	b, err := os.ReadFile("openapi.json")
	if err == nil {
		err = json.Unmarshal(b, &doc)
	}
	if err != nil {
		panic(err)
	}
	return doc.Codes
})

// expectError checks an error answer: its status, its stable code, that
// the document lists that code with that status, and that it shows no key.
func (r *relay) expectError(a answer, status int, code string) {
	r.t.Helper()
	if a.status != status || a.errorCode(r.t) != code {
		r.t.Fatalf("got %d %s, want %d %s", a.status, a.body, status, code)
	}
	if documentedStatus()[code] != status {
		r.t.Fatalf("%d %s is not in the OpenAPI document's x-error-codes", status, code)
	}
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		r.t.Fatalf("error answered as %q", ct)
	}
	for _, key := range r.keys {
		if bytes.Contains(a.body, []byte(key)) {
			r.t.Fatal("an answer shows a key")
		}
	}
}

// valid is a request every check passes; each attack changes one thing.
func valid() map[string]any {
	return map[string]any{"from": "ann@corp.example", "to": []string{"bob@example.com"}, "subject": "hi", "text": "hello"}
}

func with(k string, v any) map[string]any {
	m := valid()
	m[k] = v
	return m
}

// TestHostileJSON: each request is refused with the code that says what
// to fix, and nothing reaches the queue.
func TestHostileJSON(t *testing.T) {
	r := startRelay(t, withAPI(func(o *httpapi.Options) { o.MaxMessageBytes = 200_000 }))
	tooMany := make([]string, 10_000)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("r%d@example.com", i)
	}
	huge := base64.StdEncoding.EncodeToString(make([]byte, 300_000))
	almost := base64.StdEncoding.EncodeToString(make([]byte, 147_000)) // fits the body, not once built
	for _, tt := range []struct {
		name   string
		user   string
		body   any
		status int
		code   string
	}{
		{"CRLF in the subject", userCorp, with("subject", "hi\r\nBcc: victim@example.com"), 422, "invalid_field"},
		{"LF in the subject", userCorp, with("subject", "hi\nX-Evil: 1"), 422, "invalid_field"},
		{"CRLF in a header value", userCorp, with("headers", map[string]string{"X-Tag": "a\r\nReceived: forged"}), 422, "invalid_field"},
		{"CRLF in a header name", userCorp, with("headers", map[string]string{"X-A\r\nReceived": "forged"}), 422, "invalid_field"},
		{"colon in a header name", userCorp, with("headers", map[string]string{"X-A: b": "c"}), 422, "invalid_field"},
		{"CRLF in the from name", userCorp, with("from", "\"Ann\r\nBcc: x@example.com\" <ann@corp.example>"), 422, "invalid_field"},
		{"CRLF in a recipient", userCorp, with("to", []string{"bob@example.com\r\nRCPT TO:<x@example.com>"}), 422, "invalid_field"},
		{"NUL in the text", userCorp, with("text", "a\x00b"), 422, "invalid_field"},
		{"Received header", userCorp, with("headers", map[string]string{"Received": "from forged"}), 422, "invalid_field"},
		{"DKIM-Signature header", userCorp, with("headers", map[string]string{"DKIM-Signature": "v=1"}), 422, "invalid_field"},
		{"Bcc header", userCorp, with("headers", map[string]string{"bcc": "x@example.com"}), 422, "invalid_field"},
		{"From header", userCorp, with("headers", map[string]string{"From": "ceo@bank.example"}), 422, "invalid_field"},
		{"top Content-Transfer-Encoding", userCorp, with("headers", map[string]string{"Content-Transfer-Encoding": "8bit"}), 422, "invalid_field"},
		{"the label header", userCorp, with("headers", map[string]string{"X-Mailfleet-Label": "account=other"}), 422, "invalid_field"},
		{"huge header value", userCorp, with("headers", map[string]string{"X-Big": strings.Repeat("a", 5000)}), 422, "invalid_field"},
		{"huge subject", userCorp, with("subject", strings.Repeat("a", 5000)), 422, "invalid_field"},
		// go-message folds at 76 bytes less the name: a name of 74 or
		// more made it panic, and the connection was dropped unanswered.
		{"74-byte header name", userCorp, with("headers", map[string]string{"X-" + strings.Repeat("a", 72): "x"}), 422, "invalid_field"},
		{"sender outside the account's domains", userCorp, with("from", "ceo@bank.example"), 403, "sender_not_allowed"},
		{"non-ASCII address", userCorp, with("to", []string{"bjørn@example.com"}), 422, "invalid_field"},
		{"not an address", userCorp, with("to", []string{"bob"}), 422, "invalid_field"},
		{"no recipient", userCorp, with("to", []string{}), 422, "invalid_field"},
		{"no body", userCorp, map[string]any{"from": "ann@corp.example", "to": []string{"b@example.com"}}, 422, "invalid_field"},
		{"over the account's maxRecipients", userFew, map[string]any{"from": "a@few.example", "to": []string{"a@example.com", "b@example.com"},
			"cc": []string{"c@example.com"}, "bcc": []string{"d@example.com"}, "text": "x"}, 422, "too_many_recipients"},
		{"ten thousand recipients", userCorp, with("to", tooMany), 422, "too_many_recipients"},
		{"bad base64", userCorp, with("attachments", []map[string]string{{"filename": "a", "content": "!!!"}}), 422, "invalid_field"},
		{"CRLF in a file name", userCorp, with("attachments", []map[string]string{{"filename": "a\r\nX: y", "content": ""}}), 422, "invalid_field"},
		{"multipart attachment type", userCorp, with("attachments", []map[string]string{{"filename": "a", "contentType": "multipart/mixed; boundary=x", "content": ""}}), 422, "invalid_field"},
		{"content id with CRLF", userCorp, with("attachments", []map[string]string{{"filename": "a", "content": "", "contentId": "x>\r\nX: y"}}), 422, "invalid_field"},
		{"huge base64", userCorp, with("attachments", []map[string]string{{"filename": "a", "content": huge}}), 413, "too_large"},
		{"message over the limit once built", userCorp, with("attachments", []map[string]string{{"filename": "a", "content": almost}}), 413, "too_large"},
		{"label other than the username's", userMain + "#1001", with("labelId", "2001"), 422, "invalid_field"},
		{"suspended label in the body", userMain, map[string]any{"from": "a@acme.example", "to": []string{"b@example.com"}, "text": "x", "labelId": "1002"}, 422, "invalid_field"},
		{"malformed label", userMain, map[string]any{"from": "a@acme.example", "to": []string{"b@example.com"}, "text": "x", "labelId": "a#b"}, 422, "invalid_field"},
		{"custom arg too long", userCorp, with("customArgs", map[string]string{"k": strings.Repeat("v", 2000)}), 422, "invalid_field"},
		{"custom arg not a string", userCorp, with("customArgs", map[string]any{"k": 1}), 400, "invalid_json"},
		{"to not a list", userCorp, with("to", "bob@example.com"), 400, "invalid_json"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r.t = t
			r.expectError(r.postJSON(tt.user, tt.body), tt.status, tt.code)
		})
	}
	r.t = t
	if n := len(r.stored()); n != 0 {
		t.Fatalf("%d refused messages were queued", n)
	}
}

// TestHostileBodies covers what JSON encoding cannot produce.
func TestHostileBodies(t *testing.T) {
	r := startRelay(t, withAPI(func(o *httpapi.Options) { o.MaxMessageBytes = 100_000 }))
	ok := `{"from":"ann@corp.example","to":["bob@example.com"],"text":"x"`
	for _, tt := range []struct {
		name, contentType, body string
		status                  int
		code                    string
	}{
		{"non-UTF-8", "application/json", ok + `,"subject":"caf` + "\xe9" + `"}`, 400, "invalid_json"},
		{"duplicate key", "application/json", ok + `,"to":["victim@example.com"]}`, 400, "invalid_json"},
		{"duplicate nested key", "application/json", ok + `,"headers":{"X-A":"1","X-A":"2"}}`, 400, "invalid_json"},
		{"unknown field", "application/json", ok + `,"replyTo":"x@example.com"}`, 400, "invalid_json"},
		{"two values", "application/json", ok + `}{}`, 400, "invalid_json"},
		{"truncated", "application/json", ok, 400, "invalid_json"},
		{"empty", "application/json", "", 400, "invalid_json"},
		{"deep nesting", "application/json", strings.Repeat("[", 99_000), 400, "invalid_json"},
		// Refused before they are decoded: 20,000 addresses took megabytes
		// of strings only to be refused; 4 million fit in 16 MB.
		{"a list of 20,000 recipients", "application/json", `{"from":"ann@corp.example","to":[` + strings.Repeat(`"a",`, 20_000) + `"a"],"text":"x"}`, 422, "too_many_recipients"},
		{"a list of 1,001 attachments", "application/json", ok + `,"attachments":[` + strings.Repeat(`{},`, 1000) + `{}]}`, 400, "invalid_json"},
		{"text/plain", "text/plain", ok + "}", 415, "unsupported_media_type"},
		{"no content type", "", ok + "}", 415, "unsupported_media_type"},
		{"form without boundary", "multipart/form-data", "x", 400, "invalid_form"},
		{"over the size limit", "application/json", ok + `,"html":"` + strings.Repeat("a", 100_001) + `"}`, 413, "too_large"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r.t = t
			r.expectError(r.post(userCorp, tt.contentType, []byte(tt.body)), tt.status, tt.code)
		})
	}
}

// TestHostileForms: the form has the JSON body's strictness.
func TestHostileForms(t *testing.T) {
	r := startRelay(t)
	for _, tt := range []struct {
		name  string
		parts [][2]string
		code  string
	}{
		{"from twice", [][2]string{{"from", "ann@corp.example"}, {"from", "ceo@bank.example"}, {"to", "b@example.com"}, {"text", "x"}}, "invalid_form"},
		{"unknown field", [][2]string{{"from", "ann@corp.example"}, {"to", "b@example.com"}, {"text", "x"}, {"smuggle", "x"}}, "invalid_form"},
		{"non-UTF-8 value", [][2]string{{"from", "ann@corp.example"}, {"to", "b@example.com"}, {"text", "caf\xe9"}}, "invalid_form"},
		{"headers not JSON", [][2]string{{"from", "ann@corp.example"}, {"to", "b@example.com"}, {"text", "x"}, {"headers", "X-A: 1"}}, "invalid_form"},
		{"headers with a duplicate", [][2]string{{"from", "ann@corp.example"}, {"to", "b@example.com"}, {"text", "x"}, {"headers", `{"X-A":"1","X-A":"2"}`}}, "invalid_form"},
		{"attachments as a value", [][2]string{{"from", "ann@corp.example"}, {"to", "b@example.com"}, {"text", "x"}, {"attachments", "abc"}}, "invalid_form"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r.t = t
			var b bytes.Buffer
			b.WriteString("--XX\r\n")
			for _, p := range tt.parts {
				fmt.Fprintf(&b, "Content-Disposition: form-data; name=%q\r\n\r\n%s\r\n--XX\r\n", p[0], p[1])
			}
			body := strings.TrimSuffix(b.String(), "\r\n") + "--\r\n"
			r.expectError(r.post(userCorp, "multipart/form-data; boundary=XX", []byte(body)), 400, tt.code)
		})
	}
}

// TestRoutesAndMethods: wrong method, unknown path, the document itself.
func TestRoutesAndMethods(t *testing.T) {
	r := startRelay(t)
	get := func(path string) answer {
		req, _ := http.NewRequest(http.MethodGet, r.url(path), nil)
		return r.do(req)
	}
	a := get("/v1/mail/send")
	r.expectError(a, 405, "method_not_allowed")
	if a.header.Get("Allow") != "POST" {
		t.Fatalf("Allow %q", a.header.Get("Allow"))
	}
	r.expectError(get("/v1/mail/send/../../etc/passwd"), 404, "not_found")
	r.expectError(get("/"), 404, "not_found")
	doc := get("/v1/openapi.json")
	want, _ := os.ReadFile("openapi.json")
	if doc.status != 200 || !bytes.Equal(doc.body, want) {
		t.Fatalf("GET /v1/openapi.json: %d, %d bytes", doc.status, len(doc.body))
	}
	req, _ := http.NewRequest(http.MethodDelete, r.url("/v1/openapi.json"), nil)
	r.expectError(r.do(req), 405, "method_not_allowed")
}

// TestAuth: no credentials, wrong ones, a suspended label.
func TestAuth(t *testing.T) {
	r := startRelay(t)
	a := r.post("", "application/json", []byte("{}"))
	r.expectError(a, 401, "unauthorized")
	if a.header.Get("WWW-Authenticate") != `Basic realm="mailfleet", charset="UTF-8"` {
		t.Fatalf("WWW-Authenticate %q", a.header.Get("WWW-Authenticate"))
	}
	req, _ := http.NewRequest(http.MethodPost, r.url("/v1/mail/send"), strings.NewReader("{}"))
	req.SetBasicAuth(userMain+"#1002", r.keys[userMain]) // suspended label
	r.expectError(r.do(req), 401, "unauthorized")
}

// TestFailedLoginsShareSMTPsThrottle: failures over the API and over SMTP
// AUTH count against the one address, and shut both doors.
func TestFailedLoginsShareSMTPsThrottle(t *testing.T) {
	r := startRelay(t) // 5 failures per window
	wrong := func() answer {
		req, _ := http.NewRequest(http.MethodPost, r.url("/v1/mail/send"), strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/json")
		req.SetBasicAuth(userMain, "not-the-key-not-the-key")
		return r.do(req)
	}
	for range 2 {
		r.expectError(wrong(), 401, "unauthorized")
	}
	c := dialSMTP(t, r)
	for range 3 {
		c.expect("AUTH PLAIN "+b64("\x00"+userMain+"\x00wrong-wrong-wrong-wrong"), "535 5.7.8")
	}
	r.expectError(wrong(), 429, "auth_throttled")
	// The right key is refused too while the address is shut out.
	r.expectError(r.postJSON(userMain, valid()), 429, "auth_throttled")
	c.expect("AUTH PLAIN "+b64("\x00"+userMain+"\x00"+r.keys[userMain]), "421 4.7.0")
}

// TestOldTLSRefused: the API's listener takes TLS 1.2 and newer only.
func TestOldTLSRefused(t *testing.T) {
	r := startRelay(t)
	conn, err := tls.Dial("tcp", r.api.Addr().String(), &tls.Config{RootCAs: r.caPool, ServerName: "localhost", MaxVersion: tls.VersionTLS11})
	if err == nil {
		conn.Close()
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
}

// TestSlowHeaderIsCut: a client that never finishes its header is
// disconnected (slowloris), after ReadHeaderTimeout.
func TestSlowHeaderIsCut(t *testing.T) {
	r := startRelay(t, withAPI(func(o *httpapi.Options) { o.ReadHeaderTimeout = 200e6 }))
	conn, err := tls.Dial("tcp", r.api.Addr().String(), &tls.Config{RootCAs: r.caPool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "POST /v1/mail/send HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	// The server closes the connection; without the timeout this read
	// would block until the test's own deadline.
	if _, err := io.Copy(io.Discard, conn); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("read after a stalled header: %v", err)
	}
}

// TestDeepNestingAtFullSize: 16 MB of '[' (the default size limit) is
// refused, and the relay lives on. The check for duplicate keys recursed
// once per level, and at this depth that was a fatal stack overflow,
// which ended the process with every SMTP session in it.
func TestDeepNestingAtFullSize(t *testing.T) {
	r := startRelay(t)
	r.expectError(r.post(userCorp, "application/json", bytes.Repeat([]byte("["), 15_900_000)), 400, "invalid_json")
	r.expectError(r.post(userCorp, "application/json", []byte(`{"from":"ann@corp.example","to":["b@example.com"],"text":"x","customArgs":`+
		strings.Repeat(`{"a":`, 20)+`1`+strings.Repeat(`}`, 21))), 400, "invalid_json")
	r.postJSON(userCorp, valid()).messageID(t)
}

// TestLongestHeaderName: a custom header name of the longest length the
// API takes is built and queued.
func TestLongestHeaderName(t *testing.T) {
	r := startRelay(t)
	name := "X-" + strings.Repeat("a", 62)
	id := r.postJSON(userCorp, with("headers", map[string]string{name: strings.Repeat("value ", 150)})).messageID(t)
	m, ok := r.stored()[id]
	if !ok || !bytes.Contains(bytes.ToLower(m.Body), []byte(strings.ToLower(name)+": value")) { // the name is canonicalised
		t.Fatalf("message %s: the header is not in %q", id, m.Body)
	}
}

// TestOneAccountCannotTakeEverySlot: an account trickling uploads holds at
// most a quarter of the request slots; its next request is told to come
// back, while another account's goes through. Before, sixteen slow
// uploads from one key held every slot and everyone else waited.
func TestOneAccountCannotTakeEverySlot(t *testing.T) {
	r := startRelay(t, withAPI(func(o *httpapi.Options) { o.MaxInFlight = 4; o.SlotWait = 300 * time.Millisecond }))
	body, upload := io.Pipe()
	slow, err := http.NewRequest(http.MethodPost, r.url("/v1/mail/send"), body)
	if err != nil {
		t.Fatal(err)
	}
	slow.Header.Set("Content-Type", "application/json")
	slow.SetBasicAuth(userCorp, r.keys[userCorp])
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := r.client().Do(slow); err == nil {
			resp.Body.Close()
		}
	}()
	upload.Write([]byte(`{"from":`)) // and no more, until the end

	deadline := time.Now().Add(10 * time.Second)
	for {
		a := r.postJSON(userCorp, valid())
		if a.status == http.StatusServiceUnavailable {
			r.expectError(a, 503, "unavailable")
			if a.header.Get("Retry-After") == "" {
				t.Error("no Retry-After")
			}
			break
		}
		a.messageID(t) // before the slow upload took its slot
		if time.Now().After(deadline) {
			t.Fatal("the account's second request was never refused while its first held a slot")
		}
	}
	r.postJSON(userMain, map[string]any{"from": "ann@acme.example", "to": []string{"b@example.com"}, "text": "x"}).messageID(t)
	upload.CloseWithError(io.ErrUnexpectedEOF)
	<-done
}

// TestAPanicIsAnswered: a bug that panics while a request is handled is
// answered (503, the error shape) and logged at error level, where
// net/http alone would drop the connection and log it at debug level.
func TestAPanicIsAnswered(t *testing.T) {
	r := startRelay(t, withPolicy(func(p httpapi.Policy) httpapi.Policy { return panickingPolicy{p} }))
	r.expectError(r.postJSON(userCorp, valid()), 503, "unavailable")
	if !strings.Contains(r.logs.String(), `"level":"ERROR","msg":"http api: request handling panicked"`) {
		t.Errorf("the panic is not in the log at error level:\n%s", r.logs.String())
	}
	r.postJSON(userCorp, valid()) // the server still answers
}

type panickingPolicy struct{ httpapi.Policy }

func (panickingPolicy) Submit(context.Context, submission.Client, credentials.Identity, submission.Message) (string, error) {
	var headers []string
	return headers[3], nil // a bug
}
