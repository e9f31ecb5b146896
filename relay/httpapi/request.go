package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
// unknown field, one value.
func decodeJSON(body []byte) (*SendRequest, *apiError) {
	if !utf8.Valid(body) {
		return nil, newError(codeInvalidJSON, "the body is not valid UTF-8")
	}
	if err := rejectDuplicateKeys(body); err != nil {
		return nil, newError(codeInvalidJSON, err.Error())
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var req SendRequest
	if err := dec.Decode(&req); err != nil {
		return nil, newError(codeInvalidJSON, jsonProblem(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, newError(codeInvalidJSON, "the body holds more than one JSON value")
	}
	return &req, nil
}

// jsonProblem says what is wrong without echoing more than a field name.
func jsonProblem(err error) string {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		return fmt.Sprintf("field %q: want a %s", typeErr.Field, jsonTypeName(typeErr.Type.Kind().String()))
	case errors.As(err, &syntaxErr):
		return fmt.Sprintf("malformed JSON at byte %d", syntaxErr.Offset)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ") + "; see /v1/openapi.json"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "the body is empty or ends early"
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
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	err := walkValue(dec, 0)
	var dup *duplicateKey
	if errors.As(err, &dup) || errors.Is(err, errTooDeep) {
		return err
	}
	return nil
}

// maxJSONDepth bounds the nesting of a request's JSON. The document is at
// most four levels deep; walkValue recurses once per level, and a body of
// 16 MB of '[' would otherwise take 16 million stack frames, a fatal stack
// overflow that ends the relay (SMTP sessions included), not an error.
const maxJSONDepth = 16

var errTooDeep = fmt.Errorf("objects and lists are nested deeper than %d levels", maxJSONDepth)

type duplicateKey struct{ key string }

func (d *duplicateKey) Error() string {
	return fmt.Sprintf("key %q appears twice in one object", d.key)
}

func walkValue(dec *json.Decoder, depth int) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if (tok == json.Delim('{') || tok == json.Delim('[')) && depth >= maxJSONDepth {
		return errTooDeep
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return err
			}
			key, _ := k.(string)
			if seen[key] {
				return &duplicateKey{key}
			}
			seen[key] = true
			if err := walkValue(dec, depth+1); err != nil {
				return err
			}
		}
	case json.Delim('['):
		for dec.More() {
			if err := walkValue(dec, depth+1); err != nil {
				return err
			}
		}
	default:
		return nil
	}
	_, err = dec.Token() // the closing delimiter
	return err
}
