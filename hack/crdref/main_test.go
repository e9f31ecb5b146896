package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testCRD = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.io
spec:
  group: example.io
  names: {kind: Widget, plural: widgets, categories: [example]}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
    schema:
      openAPIV3Schema:
        description: Widget is a test kind.
        type: object
        properties:
          spec:
            type: object
            required: [size]
            x-kubernetes-validations:
            - rule: "self.size > 0 || has(self.name)"
              message: size or name
            properties:
              size: {type: integer, format: int32, minimum: 1, maximum: 10, default: 2, description: "Size\n  in units."}
              mode: {type: string, enum: [A, B]}
              tags: {type: array, items: {type: string, pattern: "^[a-z]+$"}, x-kubernetes-list-type: set}
              parts:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  properties:
                    name: {type: string}
`

// TestRender: every field with its path, type, requiredness, one-line
// description and validation, CEL rules escaped for a Markdown table.
func TestRender(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "widgets.yaml"), []byte(testCRD), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "ref.md")
	if err := run(dir, out, false); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	for _, want := range []string{
		"## Widget",
		"`example.io/v1`, namespaced; `kubectl get widgets`; categories: `example`; status subresource.",
		"| `spec.size` | integer (int32) | yes | Size in units. | default `2`; minimum 1; maximum 10 |",
		"| `spec.mode` | string |  |  | one of `\"A\"`, `\"B\"` |",
		"| `spec.tags` | []string (set) |  |  | each item: pattern `^[a-z]+$` |",
		"| `spec.parts[].name` | string |",
		"[]object (map by name)",
		`rule ` + "`self.size > 0 \\|\\| has(self.name)`" + `: "size or name"`,
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("reference lacks %q:\n%s", want, doc)
		}
	}
	if err := run(dir, out, true); err != nil {
		t.Errorf("-check right after writing: %v", err)
	}
	if err := os.WriteFile(out, []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(dir, out, true); err == nil || !strings.Contains(err.Error(), "make docs") {
		t.Errorf("-check of a stale file: %v, want an error saying to run make docs", err)
	}
}
