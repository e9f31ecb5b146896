package httpapi

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Every error the API answers has one shape, documented in docs/api.md and
// the OpenAPI document:
//
//	{"error": {"code": "frequency_limited", "message": "frequency limited"}}
//
// code is stable and meant for programs; message is for people and says
// what to fix. Neither ever holds a key, a stack trace or an internal
// error's text.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// The error codes and the status each is answered with. The OpenAPI test
// holds the document to this table, so adding a code here without
// documenting it fails.
const (
	codeInvalidJSON          = "invalid_json"
	codeInvalidForm          = "invalid_form"
	codeInvalidField         = "invalid_field"
	codeUnauthorized         = "unauthorized"
	codeSenderNotAllowed     = "sender_not_allowed"
	codeNotFound             = "not_found"
	codeNotSuppressed        = "not_suppressed"
	codeMethodNotAllowed     = "method_not_allowed"
	codeTooLarge             = "too_large"
	codeUnsupportedMediaType = "unsupported_media_type"
	codeTooManyRecipients    = "too_many_recipients"
	codeRecipientSuppressed  = "recipient_suppressed"
	codeFrequencyLimited     = "frequency_limited"
	codeAuthThrottled        = "auth_throttled"
	codeBudgetUnavailable    = "budget_unavailable"
	codeQueueUnavailable     = "queue_unavailable"
	codeUnavailable          = "unavailable"
	codeManaged              = "managed"
)

var errorStatus = map[string]int{
	codeInvalidJSON:          http.StatusBadRequest,
	codeInvalidForm:          http.StatusBadRequest,
	codeInvalidField:         http.StatusUnprocessableEntity,
	codeTooManyRecipients:    http.StatusUnprocessableEntity,
	codeRecipientSuppressed:  http.StatusUnprocessableEntity,
	codeUnauthorized:         http.StatusUnauthorized,
	codeSenderNotAllowed:     http.StatusForbidden,
	codeNotFound:             http.StatusNotFound,
	codeNotSuppressed:        http.StatusNotFound,
	codeMethodNotAllowed:     http.StatusMethodNotAllowed,
	codeTooLarge:             http.StatusRequestEntityTooLarge,
	codeUnsupportedMediaType: http.StatusUnsupportedMediaType,
	codeFrequencyLimited:     http.StatusTooManyRequests,
	codeAuthThrottled:        http.StatusTooManyRequests,
	codeBudgetUnavailable:    http.StatusServiceUnavailable,
	codeQueueUnavailable:     http.StatusServiceUnavailable,
	codeUnavailable:          http.StatusServiceUnavailable,
	codeManaged:              http.StatusConflict,
}

// apiError is an answer that is not a 200.
type apiError struct {
	code    string
	message string
	// retryAfter, when positive, is sent as Retry-After (seconds).
	retryAfter int
	// challenge sends WWW-Authenticate (401).
	challenge bool
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func newError(code, message string) *apiError { return &apiError{code: code, message: message} }

// writeError answers e; the status comes from the table alone.
func writeError(w http.ResponseWriter, e *apiError) int {
	status := errorStatus[e.code]
	if e.challenge {
		w.Header().Set("WWW-Authenticate", authChallenge)
	}
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.retryAfter))
	}
	writeJSON(w, status, errorBody{Error: errorDetail{Code: e.code, Message: e.message}})
	return status
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
