package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"unicode/utf8"
)

// The multipart/form-data fields: the JSON fields as form values (to, cc
// and bcc repeated, headers and customArgs as JSON objects), files as
// "attachments", and inline images as "inline" files whose file name is
// their Content-ID. The OpenAPI test holds the document's form schema to
// this list.
var formFields = []string{
	"from", "to", "cc", "bcc", "subject", "text", "html", "headers", "labelId", "customArgs",
	"attachments", "inline",
}

// maxFormParts bounds the parts of one form, whatever their size.
const maxFormParts = 2000

// decodeForm reads a multipart/form-data body into a SendRequest. The
// body's size is bounded by the caller (http.MaxBytesReader).
func decodeForm(body io.Reader, boundary string) (*SendRequest, *apiError) {
	mr := multipart.NewReader(body, boundary)
	req := &SendRequest{}
	seen := map[string]bool{}
	for n := 0; ; n++ {
		if n == maxFormParts {
			return nil, newError(codeInvalidForm, fmt.Sprintf("the form has more than %d parts", maxFormParts))
		}
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return req, nil
		}
		if err != nil {
			return nil, formReadError(err)
		}
		if apiErr := req.addPart(part, seen); apiErr != nil {
			return nil, apiErr
		}
	}
}

// formReadError tells a body over the limit from a malformed one.
func formReadError(err error) *apiError {
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return tooLarge()
	}
	return newError(codeInvalidForm, "malformed multipart/form-data body")
}

func (req *SendRequest) addPart(part *multipart.Part, seen map[string]bool) *apiError {
	defer part.Close()
	name := part.FormName()
	data, err := io.ReadAll(part)
	if err != nil {
		return formReadError(err)
	}
	if name == "attachments" || name == "inline" {
		return req.addFile(name, part, data)
	}
	if !utf8.Valid(data) {
		return newError(codeInvalidForm, fmt.Sprintf("field %q is not valid UTF-8", name))
	}
	return req.addValue(name, string(data), seen)
}

func (req *SendRequest) addFile(name string, part *multipart.Part, data []byte) *apiError {
	if part.FileName() == "" {
		return newError(codeInvalidForm, fmt.Sprintf("field %q: want a file (a part with a filename)", name))
	}
	a := Attachment{Filename: part.FileName(), ContentType: part.Header.Get("Content-Type"), decoded: data}
	if name == "inline" {
		a.ContentID = part.FileName()
	}
	req.Attachments = append(req.Attachments, a)
	return nil
}

// addValue sets one form value; the single-valued fields may come once.
func (req *SendRequest) addValue(name, v string, seen map[string]bool) *apiError {
	lists := map[string]*[]string{"to": &req.To, "cc": &req.Cc, "bcc": &req.Bcc}
	if l, ok := lists[name]; ok {
		*l = append(*l, v)
		return nil
	}
	if seen[name] {
		return newError(codeInvalidForm, fmt.Sprintf("field %q: given more than once", name))
	}
	seen[name] = true
	singles := map[string]*string{"from": &req.From, "subject": &req.Subject, "text": &req.Text, "html": &req.HTML, "labelId": &req.LabelID}
	if p, ok := singles[name]; ok {
		*p = v
		return nil
	}
	objects := map[string]*map[string]string{"headers": &req.Headers, "customArgs": &req.CustomArgs}
	if p, ok := objects[name]; ok {
		return decodeObject(name, v, p)
	}
	return newError(codeInvalidForm, fmt.Sprintf("unknown field %q; see /v1/openapi.json", name))
}

// decodeObject reads a form value that is a JSON object of strings, with
// the JSON body's strictness.
func decodeObject(name, v string, into *map[string]string) *apiError {
	if err := rejectDuplicateKeys([]byte(v)); err != nil {
		return newError(codeInvalidForm, fmt.Sprintf("field %q: %v", name, err))
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(v)))
	if err := dec.Decode(into); err != nil {
		return newError(codeInvalidForm, fmt.Sprintf("field %q: want a JSON object of strings", name))
	}
	if _, err := dec.Token(); err != io.EOF {
		return newError(codeInvalidForm, fmt.Sprintf("field %q: want one JSON object", name))
	}
	return nil
}
