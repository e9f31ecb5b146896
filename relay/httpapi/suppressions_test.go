package httpapi_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
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
	if json.Unmarshal(a.body, &entry); a.status != 200 || entry.QueueID != "q1" || entry.Reason != "bounce" || !entry.Since.Equal(at) {
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
