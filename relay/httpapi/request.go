package httpapi

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/mailfleet/mailfleet/relay/strictjson"
)

// SendRequest is the body of POST /v1/mail/send, as JSON. The OpenAPI
// document's SendRequest schema is checked against this type's fields.
type SendRequest struct {
	From        string            `json:"from"`
	To          []string          `json:"to"`
	Cc          []string          `json:"cc,omitempty"`
	Bcc         []string          `json:"bcc,omitempty"`
	Subject     string            `json:"subject,omitempty"`
	Text        string            `json:"text,omitempty"`
	HTML        string            `json:"html,omitempty"`
	Headers     map[string]string `json:"headers,omitempty"`
	Attachments []Attachment      `json:"attachments,omitempty"`
	LabelID     string            `json:"labelId,omitempty"`
	CustomArgs  map[string]string `json:"customArgs,omitempty"`
}

// Attachment is a file; with a ContentID it is an inline part that the
// HTML refers to as cid:<contentId>.
type Attachment struct {
	Filename    string `json:"filename"`
	ContentType string `json:"contentType,omitempty"`
	// Content is base64 (standard alphabet, padded) in JSON.
	Content   string `json:"content"`
	ContentID string `json:"contentId,omitempty"`

	// decoded is the file's bytes: from Content, or a multipart file.
	decoded []byte
}

// SendResponse is the answer to an accepted message.
type SendResponse struct {
	MessageID string `json:"messageId"`
	Queued    bool   `json:"queued"`
}

// decodeJSON reads a SendRequest strictly: UTF-8 only (encoding/json
// would quietly replace bad bytes), every key once (it would keep the
// last, so a proxy that reads the first sees another message), no
// unknown field, one value. The keys are checked by a walk over the
// tokens and the value decoded from the body in place: a json.Decoder
// would copy the body into buffers of its own, several times over for a
// 16 MB request.
func decodeJSON(body []byte) (*SendRequest, *apiError) {
	if !utf8.Valid(body) {
		return nil, newError(codeInvalidJSON, "the body is not valid UTF-8")
	}
	if err := checkKeys(body); err != nil {
		if long, ok := errors.AsType[*strictjson.LongList](err); ok && slices.Contains([]string{"to", "cc", "bcc"}, long.Path) {
			return nil, newError(codeTooManyRecipients, err.Error())
		}
		return nil, newError(codeInvalidJSON, err.Error())
	}
	var req SendRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, newError(codeInvalidJSON, strictjson.Describe(err))
	}
	return &req, nil
}

// requestKeys are the keys a SendRequest's objects may hold, by where
// they are (strictjson's paths); objects elsewhere (headers, customArgs)
// may hold any.
var requestKeys = map[string]map[string]bool{
	"":              jsonKeys(SendRequest{}),
	"attachments[]": jsonKeys(Attachment{}),
}

// jsonKeys are the names encoding/json gives v's exported fields.
func jsonKeys(v any) map[string]bool {
	keys := map[string]bool{}
	t := reflect.TypeOf(v)
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		keys[cmp.Or(name, f.Name)] = true
	}
	return keys
}

// requestRules are what a request's JSON may hold, checked before it is
// decoded.
var requestRules = strictjson.Rules{Known: requestKeys, MaxDepth: maxJSONDepth, MaxItems: maxListItems}

// rejectDuplicateKeys fails on a key that an object of a form's JSON value
// holds twice, at any depth, or on nesting or lists past the request's
// bounds.
func rejectDuplicateKeys(body []byte) error {
	return strictjson.Check(body, strictjson.Rules{MaxDepth: maxJSONDepth, MaxItems: maxListItems})
}

// checkKeys is the strict walk of a request's body: its errors name what
// to fix.
func checkKeys(body []byte) error {
	err := strictjson.Check(body, requestRules)
	if _, ok := errors.AsType[*strictjson.UnknownKey](err); ok {
		return fmt.Errorf("%w; see /v1/openapi.json", err)
	}
	return err
}

// maxListItems bounds every list of a request before it is decoded: a
// 16 MB body holds four million one-character addresses, and decoding
// them all only to refuse them took hundreds of megabytes. It is the
// most recipients any account may have per message (SmtpAccount
// limits.maxRecipients); each list is checked against the account's own
// limit afterwards.
const maxListItems = 1000

// maxJSONDepth bounds the nesting of a request's JSON. The document is at
// most four levels deep.
const maxJSONDepth = 16
