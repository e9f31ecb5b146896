package httpapi_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/relay/httpapi"
	"github.com/mailfleet/mailfleet/relay/suppression"
)

// TestSuppressionsThroughTheAPI: an account reads and lifts its own
// suppressions, by address; another account sees nothing of them and
// lifts nothing.
func TestSuppressionsThroughTheAPI(t *testing.T) {
	guard := suppression.NewGuard(nil, slog.New(slog.DiscardHandler))
	r := startRelay(t, withAPI(func(o *httpapi.Options) { o.Suppressions = guard }))
	list, err := suppression.Open(context.Background(), r.queue.Conn(), r.queue.Stream(), 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	guard.Attach(list)
	at := time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC)
	if err := list.Add(context.Background(), userCorp, suppression.Entry{Recipient: "Gone@example.com", Reason: suppression.ReasonBounce,
		QueueID: "q1", DSNStatus: "5.1.1", Reply: "no such user", At: at}); err != nil {
		t.Fatal(err)
	}
	path := "/v1/suppressions/gone@example.com"

	a := r.call(http.MethodGet, userCorp, path)
	var entry httpapi.SuppressionEntry
	if json.Unmarshal(a.body, &entry); a.status != 200 || entry.QueueID != "q1" || entry.Reason != "bounce" || entry.Since == nil || !entry.Since.Equal(at) {
		t.Fatalf("GET: %d %s", a.status, a.body)
	}
	r.expectError(r.call(http.MethodGet, userMain, path), 404, "not_suppressed")
	if a := r.call(http.MethodDelete, userMain, path); a.status != 200 || string(a.body) != `{"recipient":"gone@example.com","removed":false}`+"\n" {
		t.Fatalf("another account's DELETE: %d %s", a.status, a.body)
	}
	if a := r.call(http.MethodDelete, userCorp, path); a.status != 200 || string(a.body) != `{"recipient":"gone@example.com","removed":true}`+"\n" {
		t.Fatalf("DELETE: %d %s", a.status, a.body)
	}
	r.expectError(r.call(http.MethodGet, userCorp, path), 404, "not_suppressed")
	r.expectError(r.call(http.MethodGet, userCorp, "/v1/suppressions/not an address"), 422, "invalid_field")
	r.expectError(r.call(http.MethodGet, "", path), 401, "unauthorized")
	r.expectError(r.call(http.MethodPost, userCorp, path), 405, "method_not_allowed")
}

// manualEntries are SmtpSuppressions' entries, as the relay's credentials
// carry them.
type manualEntries map[string][]suppression.Entry

func (m manualEntries) Manual(apiUser, recipient string) (suppression.Entry, bool) {
	for _, e := range m[apiUser] {
		if e.Recipient == strings.ToLower(recipient) {
			return e, true
		}
	}
	return suppression.Entry{}, false
}

func (m manualEntries) ManualEntries(apiUser string) []suppression.Entry { return m[apiUser] }

// TestSuppressionListThroughTheAPI: GET /v1/suppressions lists the
// account's own entries, manual and bounced, a page at a time; a manual
// entry is lifted only by editing its SmtpSuppression (409 managed).
func TestSuppressionListThroughTheAPI(t *testing.T) {
	guard := suppression.NewGuard(nil, slog.New(slog.DiscardHandler))
	guard.SetManual(manualEntries{userCorp: {{Recipient: "vip@example.com", Reason: suppression.ReasonManual, Source: "corp/vips", Note: "asked"}}})
	r := startRelay(t, withAPI(func(o *httpapi.Options) { o.Suppressions = guard }))
	list, err := suppression.Open(context.Background(), r.queue.Conn(), r.queue.Stream(), 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	guard.Attach(list)
	for _, rcpt := range []string{"a@example.com", "b@example.com"} {
		if err := list.Add(context.Background(), userCorp, suppression.Entry{Recipient: rcpt, Reason: suppression.ReasonBounce, At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if err := list.Add(context.Background(), userMain, suppression.Entry{Recipient: "main@example.com", Reason: suppression.ReasonBounce, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	var got []string
	next := ""
	for range 5 {
		a := r.call(http.MethodGet, userCorp, "/v1/suppressions?limit=2&cursor="+next)
		var page httpapi.SuppressionList
		if json.Unmarshal(a.body, &page); a.status != 200 || len(page.Entries) > 2 {
			t.Fatalf("GET: %d %s", a.status, a.body)
		}
		for _, e := range page.Entries {
			got = append(got, e.Recipient+"/"+e.Reason+"/"+e.Source)
		}
		if next = page.Next; next == "" {
			break
		}
	}
	if strings.Join(got, " ") != "vip@example.com/manual/corp/vips a@example.com/bounce/ b@example.com/bounce/" {
		t.Fatalf("listed %v", got)
	}
	r.expectError(r.call(http.MethodDelete, userCorp, "/v1/suppressions/vip@example.com"), 409, "managed")
	r.expectError(r.call(http.MethodGet, userCorp, "/v1/suppressions?limit=5000"), 422, "invalid_field")
	r.expectError(r.call(http.MethodGet, userCorp, "/v1/suppressions?cursor=forged"), 422, "invalid_field")
	r.expectError(r.call(http.MethodDelete, userCorp, "/v1/suppressions"), 405, "method_not_allowed")
	r.expectError(r.call(http.MethodGet, "", "/v1/suppressions"), 401, "unauthorized")
}

// call sends a request without a body as user ("" for none).
func (r *relay) call(method, user, path string) answer {
	r.t.Helper()
	req, err := http.NewRequest(method, r.url(path), nil)
	if err != nil {
		r.t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, r.keys[user])
	}
	return r.do(req)
}
