package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/mailfleet/mailfleet/relay/smtpd"
	"github.com/mailfleet/mailfleet/relay/suppression"
)

// Suppressions is the accounts' suppression list (suppression.Guard), as
// the API shows and edits it.
type Suppressions interface {
	Lookup(ctx context.Context, apiUser, recipient string) (suppression.Entry, bool, error)
	Remove(ctx context.Context, apiUser, recipient string) error
	List(ctx context.Context, apiUser, cursor string, limit int) ([]suppression.Entry, string, error)
}

// routeSuppression is GET and DELETE /v1/suppressions/{address}: is the
// address suppressed for the account that logs in, and lift it. An
// account sees and lifts only its own entries: the list is keyed by its
// api_user.
const routeSuppression = "/v1/suppressions/{address}"

const suppressionPrefix = "/v1/suppressions/"

// SuppressionEntry is the answer to GET: why and since when. Reason is
// "bounce" for what a remote server refused for good, "manual" for an
// SmtpSuppression's (Source names it, Note is its reason).
type SuppressionEntry struct {
	Recipient string     `json:"recipient"`
	Reason    string     `json:"reason"`
	QueueID   string     `json:"queueId,omitempty"`
	DSNStatus string     `json:"dsnStatus,omitempty"`
	Reply     string     `json:"reply,omitempty"`
	Source    string     `json:"source,omitempty"`
	Note      string     `json:"note,omitempty"`
	Since     *time.Time `json:"since,omitempty"`
	Until     *time.Time `json:"until,omitempty"`
}

func entryOf(e suppression.Entry) SuppressionEntry {
	out := SuppressionEntry{Recipient: e.Recipient, Reason: e.Reason, QueueID: e.QueueID, DSNStatus: e.DSNStatus,
		Reply: e.Reply, Source: e.Source, Note: e.Note, Until: e.Until}
	if !e.At.IsZero() {
		at := e.At
		out.Since = &at
	}
	return out
}

// SuppressionList is the answer to GET /v1/suppressions.
type SuppressionList struct {
	Entries []SuppressionEntry `json:"entries"`
	// Next is the cursor of the next page; absent after the last.
	Next string `json:"next,omitempty"`
}

// routeSuppressions is GET /v1/suppressions: the account's entries, a
// page at a time.
const routeSuppressions = "/v1/suppressions"

// Pages hold defaultPageSize entries unless limit asks for fewer or more,
// up to maxPageSize: a page's work is bounded whatever the list holds.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

func (s *Server) suppressionList(w http.ResponseWriter, r *http.Request) int {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		return writeError(w, newError(codeMethodNotAllowed, "use GET"))
	}
	id, e := s.login(r, s.client(r))
	if e != nil {
		return writeError(w, e)
	}
	limit := defaultPageSize
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPageSize {
			return writeError(w, invalid("limit %q: want 1 to %d", smtpd.PrintableAddress(v), maxPageSize))
		}
		limit = n
	}
	if s.o.Suppressions == nil {
		writeJSON(w, http.StatusOK, SuppressionList{Entries: []SuppressionEntry{}})
		return http.StatusOK
	}
	entries, next, err := s.o.Suppressions.List(r.Context(), id.APIUser, r.URL.Query().Get("cursor"), limit)
	if errors.Is(err, suppression.ErrBadCursor) {
		return writeError(w, invalid("cursor: not one a page of this list returned"))
	}
	if err != nil {
		s.o.Log.Error("list the suppression list", "account", id.APIUser, "err", err)
		return writeError(w, &apiError{code: codeUnavailable, message: "the suppression list cannot be read now; try again later", retryAfter: 1})
	}
	out := SuppressionList{Entries: make([]SuppressionEntry, 0, len(entries)), Next: next}
	for _, e := range entries {
		out.Entries = append(out.Entries, entryOf(e))
	}
	writeJSON(w, http.StatusOK, out)
	return http.StatusOK
}

// SuppressionRemoved is the answer to DELETE.
type SuppressionRemoved struct {
	Recipient string `json:"recipient"`
	Removed   bool   `json:"removed"`
}

func (s *Server) suppression(w http.ResponseWriter, r *http.Request) int {
	if r.Method != http.MethodGet && r.Method != http.MethodDelete {
		w.Header().Set("Allow", "GET, DELETE")
		return writeError(w, newError(codeMethodNotAllowed, "use GET or DELETE"))
	}
	id, e := s.login(r, s.client(r))
	if e != nil {
		return writeError(w, e)
	}
	addr := strings.TrimPrefix(r.URL.Path, suppressionPrefix)
	if _, ok := smtpd.ParseMailbox(addr); !ok {
		return writeError(w, invalid("%q is not an address: the path is /v1/suppressions/<address>", smtpd.PrintableAddress(addr)))
	}
	if s.o.Suppressions == nil {
		return writeError(w, newError(codeNotSuppressed, "this relay keeps no suppression list"))
	}
	entry, found, err := s.o.Suppressions.Lookup(r.Context(), id.APIUser, addr)
	if err != nil {
		s.o.Log.Error("read the suppression list", "account", id.APIUser, "err", err)
		return writeError(w, &apiError{code: codeUnavailable, message: "the suppression list cannot be read now; try again later", retryAfter: 1})
	}
	if r.Method == http.MethodGet {
		if !found {
			return writeError(w, newError(codeNotSuppressed, "the address is not suppressed for this account"))
		}
		writeJSON(w, http.StatusOK, entryOf(entry))
		return http.StatusOK
	}
	if found {
		err := s.o.Suppressions.Remove(r.Context(), id.APIUser, addr)
		if managed, ok := errors.AsType[*suppression.ErrManaged](err); ok {
			return writeError(w, newError(codeManaged, managed.Error()))
		}
		if err != nil {
			s.o.Log.Error("remove from the suppression list", "account", id.APIUser, "err", err)
			return writeError(w, &apiError{code: codeUnavailable, message: "the suppression list cannot be changed now; try again later", retryAfter: 1})
		}
		s.o.Log.Info("suppression removed through the API", "account", id.APIUser)
	}
	writeJSON(w, http.StatusOK, SuppressionRemoved{Recipient: addr, Removed: found})
	return http.StatusOK
}
