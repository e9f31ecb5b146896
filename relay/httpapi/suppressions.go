package httpapi

import (
	"context"
	"net/http"
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
}

// routeSuppression is GET and DELETE /v1/suppressions/{address}: is the
// address suppressed for the account that logs in, and lift it. An
// account sees and lifts only its own entries: the list is keyed by its
// api_user.
const routeSuppression = "/v1/suppressions/{address}"

const suppressionPrefix = "/v1/suppressions/"

// SuppressionEntry is the answer to GET: why and since when.
type SuppressionEntry struct {
	Recipient string    `json:"recipient"`
	Reason    string    `json:"reason"`
	QueueID   string    `json:"queueId,omitempty"`
	DSNStatus string    `json:"dsnStatus,omitempty"`
	Reply     string    `json:"reply,omitempty"`
	Since     time.Time `json:"since"`
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
		writeJSON(w, http.StatusOK, SuppressionEntry{Recipient: entry.Recipient, Reason: entry.Reason, QueueID: entry.QueueID,
			DSNStatus: entry.DSNStatus, Reply: entry.Reply, Since: entry.At})
		return http.StatusOK
	}
	if found {
		if err := s.o.Suppressions.Remove(r.Context(), id.APIUser, addr); err != nil {
			s.o.Log.Error("remove from the suppression list", "account", id.APIUser, "err", err)
			return writeError(w, &apiError{code: codeUnavailable, message: "the suppression list cannot be changed now; try again later", retryAfter: 1})
		}
		s.o.Log.Info("suppression removed through the API", "account", id.APIUser)
	}
	writeJSON(w, http.StatusOK, SuppressionRemoved{Recipient: addr, Removed: found})
	return http.StatusOK
}
