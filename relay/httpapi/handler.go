package httpapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/smtpd"
	"github.com/mailfleet/mailfleet/relay/submission"
)

// Policy is the relay's submission policy, the one SMTP uses
// (submission.Backend): login under the failed-auth throttle, and the
// checks, budget and durable queue of a whole message.
type Policy interface {
	Login(c submission.Client, username, key string) (credentials.Identity, error)
	Submit(ctx context.Context, c submission.Client, id credentials.Identity, m submission.Message) (string, error)
}

// The routes, the OpenAPI document's paths.
const (
	routeSend    = "/v1/mail/send"
	routeOpenAPI = "/v1/openapi.json"
	routeOther   = "other" // the metrics' label for every unknown path
)

// authChallenge asks for Basic credentials; the charset says the
// username and key are read as UTF-8.
const authChallenge = `Basic realm="mailfleet", charset="UTF-8"`

// submitTimeout bounds the budget decision and the durable commit of one
// message once it is read.
const submitTimeout = time.Minute

// send handles POST /v1/mail/send.
func (s *Server) send(w http.ResponseWriter, r *http.Request) int {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return writeError(w, newError(codeMethodNotAllowed, "use POST"))
	}
	client := s.client(r)
	id, e := s.login(r, client)
	if e != nil {
		return writeError(w, e)
	}
	release, err := s.slots.take(r.Context(), id.APIUser, s.declared(r), s.o.SlotWait)
	if err != nil {
		return writeError(w, &apiError{code: codeUnavailable, message: err.Error(), retryAfter: 1})
	}
	defer release()
	queued, e := s.accept(w, r, client, id)
	if e != nil {
		return writeError(w, e)
	}
	writeJSON(w, http.StatusOK, SendResponse{MessageID: queued, Queued: true})
	return http.StatusOK
}

// declared is what a request counts against the slots' bytes: its
// Content-Length, or the size limit when it does not say (chunked); at
// least minRequestBytes, what any request costs.
func (s *Server) declared(r *http.Request) int64 {
	if r.ContentLength < 0 || r.ContentLength > s.o.MaxMessageBytes {
		return s.o.MaxMessageBytes // over the limit: refused once read
	}
	return max(r.ContentLength, minRequestBytes)
}

// minRequestBytes is what a request costs however small its body.
const minRequestBytes = 64 << 10

// accept reads, checks, builds and queues one message.
func (s *Server) accept(w http.ResponseWriter, r *http.Request, client submission.Client, id credentials.Identity) (string, *apiError) {
	req, e := s.decode(w, r)
	if e != nil {
		return "", e
	}
	m, e := validate(req, id.MaxRecipients)
	if e != nil {
		return "", e
	}
	if id, e = s.relabel(r, client, id, m.labelID); e != nil {
		return "", e
	}
	body, err := build(m, s.o.Hostname, time.Now())
	if err != nil {
		s.o.Log.Error("build message", "account", id.APIUser, "err", err)
		return "", invalid("the message could not be built from these fields")
	}
	if int64(len(body)) > s.o.MaxMessageBytes {
		return "", tooLarge()
	}
	msg := submission.Message{From: m.from.Address, To: m.recipients(), CustomArgs: m.customArgs, Body: bytes.NewReader(body)}
	// Once the message is read, a client that goes away does not cut its
	// commit short: a commit abandoned halfway may still be queued, and
	// the answer would then wrongly say it was not.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), submitTimeout)
	defer cancel()
	queued, err := s.o.Policy.Submit(ctx, client, id, msg)
	if err != nil {
		return "", s.refused(id, err)
	}
	return queued, nil
}

// client is who sent r, for the throttle, the logs and the envelope.
func (s *Server) client(r *http.Request) submission.Client {
	var remote net.Addr = &net.TCPAddr{}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		remote = net.TCPAddrFromAddrPort(ap)
	}
	log := s.o.Log.With("client", remote.String())
	c := submission.Client{Remote: remote, TLS: r.TLS != nil, Log: log}
	if r.TLS != nil {
		c.TLSVersion = strings.Replace(tls.VersionName(r.TLS.Version), "TLS ", "TLSv", 1)
	}
	return c
}

// login checks the Basic credentials under SMTP AUTH's throttle.
func (s *Server) login(r *http.Request, client submission.Client) (credentials.Identity, *apiError) {
	user, key, ok := r.BasicAuth()
	if !ok {
		return credentials.Identity{}, s.unauthorized("HTTP Basic credentials are required: api_user[#label_id] and api_key")
	}
	id, err := s.o.Policy.Login(client, user, key)
	switch {
	case err == nil:
		return id, nil
	case errors.Is(err, submission.ErrThrottled):
		return id, newError(codeAuthThrottled, "too many failed logins from this address; try again later")
	case errors.Is(err, submission.ErrInvalidCredentials):
		return id, s.unauthorized("the api_user or api_key is wrong")
	}
	client.Log.Error("authentication unavailable", "err", err)
	return id, newError(codeUnavailable, "authentication is unavailable; try again later")
}

func (s *Server) unauthorized(message string) *apiError {
	return &apiError{code: codeUnauthorized, message: message, challenge: true}
}

// relabel applies the body's labelId: the label in the username wins and
// must agree; without one, the body's is checked like a username's.
func (s *Server) relabel(r *http.Request, client submission.Client, id credentials.Identity, labelID string) (credentials.Identity, *apiError) {
	if labelID == "" || labelID == id.LabelID {
		return id, nil
	}
	if id.LabelID != "" {
		return id, invalid("labelId: %q differs from the label in the username (%q); send one of them", labelID, id.LabelID)
	}
	_, key, _ := r.BasicAuth()
	labelled, err := s.o.Policy.Login(client, wire.Username(id.APIUser, labelID), key)
	if err != nil {
		return id, invalid("labelId: %q is not an active label of this account", labelID)
	}
	return labelled, nil
}

// decode reads the body as JSON or as a multipart form, within the size
// limit; past it, the server closes the connection after answering, so a
// client cannot go on sending.
func (s *Server) decode(w http.ResponseWriter, r *http.Request) (*SendRequest, *apiError) {
	mediaType, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || (mediaType != "application/json" && mediaType != "multipart/form-data") {
		return nil, newError(codeUnsupportedMediaType, "send application/json or multipart/form-data")
	}
	if r.ContentLength > s.o.MaxMessageBytes {
		return nil, tooLarge()
	}
	body := http.MaxBytesReader(w, r.Body, s.o.MaxMessageBytes)
	if mediaType == "multipart/form-data" {
		if params["boundary"] == "" {
			return nil, newError(codeInvalidForm, "multipart/form-data needs a boundary parameter")
		}
		return decodeForm(body, params["boundary"])
	}
	data, err := readAll(body, r.ContentLength)
	if err != nil {
		return nil, formReadError(err)
	}
	return decodeJSON(data)
}

// readAll reads body into one buffer of the declared length, when there
// is one: io.ReadAll would grow it by doubling, copying a 16 MB body
// several times over.
func readAll(body io.Reader, declared int64) ([]byte, error) {
	if declared <= 0 {
		return io.ReadAll(body)
	}
	buf := bytes.NewBuffer(make([]byte, 0, declared+1))
	_, err := buf.ReadFrom(body)
	return buf.Bytes(), err
}

func tooLarge() *apiError {
	return newError(codeTooLarge, "the request is over the relay's message size limit")
}

// refused maps the policy's refusal to an answer; anything else is a
// fault the client may retry, logged here and never shown.
func (s *Server) refused(id credentials.Identity, err error) *apiError {
	refusal, ok := errors.AsType[*submission.Refusal](err)
	if !ok {
		s.o.Log.Error("submission failed", "account", id.APIUser, "err", err)
		return &apiError{code: codeUnavailable, message: "the message was not accepted; try again later", retryAfter: 1}
	}
	switch refusal.Reason {
	case submission.ReasonOverBudget:
		return &apiError{code: codeFrequencyLimited, message: "frequency limited", retryAfter: secondsToNextMinute(time.Now())}
	case submission.ReasonSenderNotAllowed:
		return newError(codeSenderNotAllowed, replyText(refusal.Err))
	case submission.ReasonRecipientSuppressed:
		return newError(codeRecipientSuppressed, replyText(refusal.Err)+"; remove it and send again")
	case submission.ReasonTooManyRecipients:
		return newError(codeTooManyRecipients, fmt.Sprintf("this account may send to at most %d recipients per message", id.MaxRecipients))
	case submission.ReasonTooBig:
		return tooLarge()
	case submission.ReasonBudgetDown:
		return &apiError{code: codeBudgetUnavailable, message: "the budget cannot be decided now; try again later", retryAfter: 1}
	case submission.ReasonQueueDown:
		return &apiError{code: codeQueueUnavailable, message: "the queue is unavailable; try again later", retryAfter: 1}
	}
	return &apiError{code: codeUnavailable, message: "the message was not accepted; try again later", retryAfter: 1}
}

// replyText is the text of the SMTP reply the policy chose: it names the
// address that was refused, and never a key.
func replyText(err error) string {
	if e, ok := errors.AsType[*smtpd.Error](err); ok {
		return e.Reply.Text
	}
	return "not allowed for this account"
}

// secondsToNextMinute is when the budget's window, a calendar minute,
// starts again.
func secondsToNextMinute(now time.Time) int {
	return 60 - now.Second()
}
