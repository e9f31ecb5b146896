package httpapi

import (
	"bytes"
	"encoding/json"
	"maps"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The document and the handlers cannot drift: these tests hold the
// embedded document to the Go request types, the form's fields, the error
// table and the routes, and docs/openapi.json to the embedded copy.

type openAPIDoc struct {
	OpenAPI    string                                 `json:"openapi"`
	Codes      map[string]int                         `json:"x-error-codes"`
	Paths      map[string]map[string]openAPIOperation `json:"paths"`
	Components struct {
		Schemas map[string]openAPISchema `json:"schemas"`
	} `json:"components"`
}

type openAPIOperation struct {
	Responses map[string]struct {
		Codes   []string       `json:"x-codes"`
		Headers map[string]any `json:"headers"`
	} `json:"responses"`
}

type openAPISchema struct {
	Properties map[string]json.RawMessage `json:"properties"`
}

func loadDoc(t *testing.T) openAPIDoc {
	t.Helper()
	var doc openAPIDoc
	dec := json.NewDecoder(bytes.NewReader(openAPIDocument))
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi %q, want 3.x", doc.OpenAPI)
	}
	return doc
}

func TestDocsCopyIsTheServedDocument(t *testing.T) {
	docs, err := os.ReadFile("../../docs/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(docs, openAPIDocument) {
		t.Fatal("docs/openapi.json differs from relay/httpapi/openapi.json: cp relay/httpapi/openapi.json docs/openapi.json")
	}
}

// jsonFields are the JSON names the decoder accepts for t's fields.
func jsonFields(t reflect.Type) []string {
	var out []string
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

func TestSchemasMatchTheRequestTypes(t *testing.T) {
	doc := loadDoc(t)
	for schema, want := range map[string][]string{
		"SendRequest":  jsonFields(reflect.TypeFor[SendRequest]()),
		"Attachment":   jsonFields(reflect.TypeFor[Attachment]()),
		"SendResponse": jsonFields(reflect.TypeFor[SendResponse]()),
		"SendForm":     slices.Sorted(slices.Values(formFields)),
	} {
		got := slices.Sorted(maps.Keys(doc.Components.Schemas[schema].Properties))
		if !slices.Equal(got, want) {
			t.Errorf("schema %s has properties %v; the decoder takes %v", schema, got, want)
		}
	}
}

func TestErrorCodesAreDocumented(t *testing.T) {
	doc := loadDoc(t)
	if !maps.Equal(doc.Codes, errorStatus) {
		t.Fatalf("x-error-codes %v, the handlers' table %v", doc.Codes, errorStatus)
	}
	var enum struct {
		Properties struct {
			Code struct {
				Enum []string `json:"enum"`
			} `json:"code"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(doc.Components.Schemas["Error"].Properties["error"], &enum); err != nil {
		t.Fatal(err)
	}
	if got := enum.Properties.Code.Enum; !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(maps.Keys(errorStatus))) {
		t.Fatalf("Error.code enum %v differs from the handlers' codes", got)
	}
	// Every code is listed by a response of some route (the send route's
	// own codes by it), with the status the handlers answer it with;
	// not_found belongs to no route.
	send := doc.Paths[routeSend]["post"]
	listed := map[string]bool{}
	for _, ops := range doc.Paths {
		for _, op := range ops {
			for status, resp := range op.Responses {
				for _, code := range resp.Codes {
					listed[code] = true
					if strconv.Itoa(errorStatus[code]) != status {
						t.Errorf("response %s lists %s, which the handlers answer with %d", status, code, errorStatus[code])
					}
				}
			}
		}
	}
	for code := range errorStatus {
		if code != codeNotFound && !listed[code] {
			t.Errorf("no response lists %s", code)
		}
	}
	if _, ok := send.Responses["429"].Headers["Retry-After"]; !ok {
		t.Error("429 does not document Retry-After")
	}
	if _, ok := send.Responses["401"].Headers["WWW-Authenticate"]; !ok {
		t.Error("401 does not document WWW-Authenticate")
	}
}

func TestRoutesAreDocumented(t *testing.T) {
	doc := loadDoc(t)
	got := slices.Sorted(maps.Keys(doc.Paths))
	if want := []string{routeSend, routeOpenAPI, routeSuppressions, routeSuppression}; !slices.Equal(got, slices.Sorted(slices.Values(want))) {
		t.Fatalf("documented paths %v, served %v", got, want)
	}
	if _, ok := doc.Paths[routeSend]["post"]; !ok || len(doc.Paths[routeSend]) != 1 {
		t.Errorf("%s: want exactly post documented", routeSend)
	}
	if _, ok := doc.Paths[routeOpenAPI]["get"]; !ok || len(doc.Paths[routeOpenAPI]) != 1 {
		t.Errorf("%s: want exactly get documented", routeOpenAPI)
	}
	if _, ok := doc.Paths[routeSuppressions]["get"]; !ok || len(doc.Paths[routeSuppressions]) != 1 {
		t.Errorf("%s: want exactly get documented", routeSuppressions)
	}
	if ops := doc.Paths[routeSuppression]; len(ops) != 2 || ops["get"].Responses == nil || ops["delete"].Responses == nil {
		t.Errorf("%s: want exactly get and delete documented", routeSuppression)
	}
}
