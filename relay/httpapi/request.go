package httpapi

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"unicode/utf8"
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
	if err := checkKeys(body, requestKeys); err != nil {
		if long, ok := errors.AsType[*longList](err); ok && slices.Contains([]string{"to", "cc", "bcc"}, long.path) {
			return nil, newError(codeTooManyRecipients, err.Error())
		}
		return nil, newError(codeInvalidJSON, err.Error())
	}
	var req SendRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, newError(codeInvalidJSON, jsonProblem(err))
	}
	return &req, nil
}

// requestKeys are the keys a SendRequest's objects may hold, by where
// they are (walkValue's paths); objects elsewhere (headers, customArgs)
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

// jsonProblem says what is wrong without echoing more than a field name.
func jsonProblem(err error) string {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		return fmt.Sprintf("field %q: want a %s", typeErr.Field, jsonTypeName(typeErr.Type.Kind().String()))
	case errors.As(err, &syntaxErr) && strings.Contains(syntaxErr.Error(), "unexpected end of JSON input"):
		return "the body is empty or ends early"
	case errors.As(err, &syntaxErr) && strings.Contains(syntaxErr.Error(), "after top-level value"):
		return "the body holds more than one JSON value"
	case errors.As(err, &syntaxErr):
		return fmt.Sprintf("malformed JSON at byte %d", syntaxErr.Offset)
	}
	return "malformed JSON"
}

func jsonTypeName(kind string) string {
	switch kind {
	case "slice":
		return "list"
	case "map", "struct":
		return "object"
	}
	return kind
}

// rejectDuplicateKeys walks the document and fails on a key that an
// object holds twice, at any depth. A syntax error is left to the decoder
// that follows, which names it.
func rejectDuplicateKeys(body []byte) error {
	return checkKeys(body, nil)
}

// checkKeys is rejectDuplicateKeys that also fails on a key that known
// does not list for the object's place in the document.
func checkKeys(body []byte, known map[string]map[string]bool) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	err := (&walker{dec: dec, known: known}).value("", 0)
	var dup *duplicateKey
	var unknown *unknownKey
	var long *longList
	if errors.As(err, &dup) || errors.As(err, &unknown) || errors.As(err, &long) || errors.Is(err, errTooDeep) {
		return err
	}
	return nil
}

// maxListItems bounds every list of a request before it is decoded: a
// 16 MB body holds four million one-character addresses, and decoding
// them all only to refuse them took hundreds of megabytes. It is the
// most recipients any account may have per message (SmtpAccount
// limits.maxRecipients); each list is checked against the account's own
// limit afterwards.
const maxListItems = 1000

type longList struct{ path string }

func (l *longList) Error() string {
	return fmt.Sprintf("%s: more than %d items", l.path, maxListItems)
}

// maxJSONDepth bounds the nesting of a request's JSON. The document is at
// most four levels deep; value recurses once per level, and a body of
// 16 MB of '[' would otherwise take 16 million stack frames, a fatal stack
// overflow that ends the relay (SMTP sessions included), not an error.
const maxJSONDepth = 16

var errTooDeep = fmt.Errorf("objects and lists are nested deeper than %d levels", maxJSONDepth)

type duplicateKey struct{ key string }

func (d *duplicateKey) Error() string {
	return fmt.Sprintf("key %q appears twice in one object", d.key)
}

type unknownKey struct{ key string }

func (u *unknownKey) Error() string {
	return fmt.Sprintf("unknown field %.64q; see /v1/openapi.json", u.key)
}

// walker reads a document's tokens. A value's path names its place: ""
// for the document, "attachments" for that key's value, "attachments[]"
// for an item of that list.
type walker struct {
	dec   *json.Decoder
	known map[string]map[string]bool
}

func (w *walker) value(path string, depth int) error {
	tok, err := w.dec.Token()
	if err != nil {
		return err
	}
	if (tok == json.Delim('{') || tok == json.Delim('[')) && depth >= maxJSONDepth {
		return errTooDeep
	}
	switch tok {
	case json.Delim('{'):
		if err := w.object(path, depth); err != nil {
			return err
		}
	case json.Delim('['):
		for n := 0; w.dec.More(); n++ {
			if n == maxListItems {
				return &longList{cmp.Or(path, "the document")}
			}
			if err := w.value(path+"[]", depth+1); err != nil {
				return err
			}
		}
	default:
		return nil
	}
	_, err = w.dec.Token() // the closing delimiter
	return err
}

func (w *walker) object(path string, depth int) error {
	known, checked := w.known[path]
	seen := map[string]bool{}
	for w.dec.More() {
		k, err := w.dec.Token()
		if err != nil {
			return err
		}
		key, _ := k.(string)
		switch {
		case seen[key]:
			return &duplicateKey{key}
		case checked && !known[key]:
			return &unknownKey{key}
		}
		seen[key] = true
		child := key
		if path != "" {
			child = path + "." + key
		}
		if err := w.value(child, depth+1); err != nil {
			return err
		}
	}
	return nil
}
