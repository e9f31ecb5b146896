// Command crdref writes the CRD reference (docs/reference/crds.md) from the
// CustomResourceDefinitions controller-gen generates, so the reference says
// exactly what the API server enforces: every field with its type, its
// description (the Go doc comment), its default and its validation,
// including CEL rules with their messages.
//
//	go run ./hack/crdref -crds config/crd/bases -out docs/reference/crds.md [-check]
//
// With -check it writes nothing and fails when the file differs from what it
// would write (`make docs-check`, part of `make test`).
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

func main() {
	crds := flag.String("crds", "config/crd/bases", "directory of CRD YAML files")
	out := flag.String("out", "docs/reference/crds.md", "the Markdown file to write")
	check := flag.Bool("check", false, "fail when -out is not up to date instead of writing it")
	flag.Parse()
	if err := run(*crds, *out, *check); err != nil {
		fmt.Fprintln(os.Stderr, "crdref:", err)
		os.Exit(1)
	}
}

func run(dir, out string, check bool) error {
	defs, err := readCRDs(dir)
	if err != nil {
		return err
	}
	doc := render(dir, defs)
	if check {
		have, err := os.ReadFile(out)
		if err != nil {
			return fmt.Errorf("read %s: %w (run `make docs`)", out, err)
		}
		if !bytes.Equal(have, doc) {
			return fmt.Errorf("%s is out of date with %s; run `make docs` and commit", out, dir)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(out), err)
	}
	if err := os.WriteFile(out, doc, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return nil
}

// crd is the part of an apiextensions.k8s.io/v1 CustomResourceDefinition the
// reference shows.
type crd struct {
	Spec struct {
		Group string `json:"group"`
		Names struct {
			Kind       string   `json:"kind"`
			Plural     string   `json:"plural"`
			ShortNames []string `json:"shortNames"`
			Categories []string `json:"categories"`
		} `json:"names"`
		Scope    string `json:"scope"`
		Versions []struct {
			Name    string `json:"name"`
			Served  bool   `json:"served"`
			Storage bool   `json:"storage"`
			Columns []struct {
				Name     string `json:"name"`
				Type     string `json:"type"`
				JSONPath string `json:"jsonPath"`
				Priority int    `json:"priority"`
			} `json:"additionalPrinterColumns"`
			Subresources map[string]any `json:"subresources"`
			Schema       struct {
				OpenAPIV3Schema *schema `json:"openAPIV3Schema"`
			} `json:"schema"`
		} `json:"versions"`
	} `json:"spec"`
}

// schema is a structural OpenAPI v3 schema, as far as the reference needs.
type schema struct {
	Type                 string             `json:"type"`
	Format               string             `json:"format"`
	Description          string             `json:"description"`
	Properties           map[string]*schema `json:"properties"`
	Items                *schema            `json:"items"`
	AdditionalProperties *schema            `json:"additionalProperties"`
	Required             []string           `json:"required"`
	Enum                 []any              `json:"enum"`
	Default              any                `json:"default"`
	Minimum              *float64           `json:"minimum"`
	Maximum              *float64           `json:"maximum"`
	MinLength            *int64             `json:"minLength"`
	MaxLength            *int64             `json:"maxLength"`
	MinItems             *int64             `json:"minItems"`
	MaxItems             *int64             `json:"maxItems"`
	Pattern              string             `json:"pattern"`
	IntOrString          bool               `json:"x-kubernetes-int-or-string"`
	PreserveUnknown      bool               `json:"x-kubernetes-preserve-unknown-fields"`
	ListType             string             `json:"x-kubernetes-list-type"`
	ListMapKeys          []string           `json:"x-kubernetes-list-map-keys"`
	Validations          []struct {
		Rule    string `json:"rule"`
		Message string `json:"message"`
	} `json:"x-kubernetes-validations"`
}

func readCRDs(dir string) ([]crd, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no CRD files in %s", dir)
	}
	var defs []crd
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read CRD: %w", err)
		}
		var c crd
		if err := yaml.Unmarshal(data, &c); err != nil {
			return nil, fmt.Errorf("decode CRD %s: %w", f, err)
		}
		if c.Spec.Names.Kind == "" {
			return nil, fmt.Errorf("%s: not a CustomResourceDefinition", f)
		}
		defs = append(defs, c)
	}
	// The order a reader meets them: the relay, then what attaches to it.
	order := map[string]int{"SmtpRelay": 0, "SmtpAccount": 1, "SmtpLabel": 2}
	sort.SliceStable(defs, func(i, j int) bool {
		oi, iok := order[defs[i].Spec.Names.Kind]
		oj, jok := order[defs[j].Spec.Names.Kind]
		if iok != jok {
			return iok
		}
		if oi != oj {
			return oi < oj
		}
		return defs[i].Spec.Names.Kind < defs[j].Spec.Names.Kind
	})
	return defs, nil
}

func render(dir string, defs []crd) []byte {
	var b strings.Builder
	b.WriteString("# CRD reference\n\n")
	fmt.Fprintf(&b, "<!-- Generated by `make docs` (hack/crdref) from %s; do not edit. -->\n\n", filepath.ToSlash(dir))
	b.WriteString("Every field of every mailfleet resource, as the API server enforces it: the\n" +
		"defaults it fills in and the validation it applies (OpenAPI and CEL rules, with\n" +
		"the message `kubectl apply` shows when a rule refuses an object).\n\n")
	for _, c := range defs {
		fmt.Fprintf(&b, "- [%s](#%s)\n", c.Spec.Names.Kind, strings.ToLower(c.Spec.Names.Kind))
	}
	for _, c := range defs {
		renderCRD(&b, c)
	}
	return []byte(b.String())
}

func renderCRD(b *strings.Builder, c crd) {
	n := c.Spec.Names
	fmt.Fprintf(b, "\n## %s\n\n", n.Kind)
	for _, v := range c.Spec.Versions {
		if !v.Served {
			continue
		}
		root := v.Schema.OpenAPIV3Schema
		fmt.Fprintf(b, "`%s/%s`, %s", c.Spec.Group, v.Name, strings.ToLower(c.Spec.Scope))
		fmt.Fprintf(b, "; `kubectl get %s`", n.Plural)
		if len(n.ShortNames) > 0 {
			fmt.Fprintf(b, " (short: `%s`)", strings.Join(n.ShortNames, "`, `"))
		}
		if len(n.Categories) > 0 {
			fmt.Fprintf(b, "; categories: `%s`", strings.Join(n.Categories, "`, `"))
		}
		if _, ok := v.Subresources["status"]; ok {
			b.WriteString("; status subresource")
		}
		b.WriteString(".\n\n")
		if root != nil && root.Description != "" {
			fmt.Fprintf(b, "%s\n\n", oneLine(root.Description))
		}
		if len(v.Columns) > 0 {
			b.WriteString("Columns of `kubectl get` (priority 1: with `-o wide`):\n\n")
			b.WriteString("| column | type | from | priority |\n| --- | --- | --- | --- |\n")
			for _, col := range v.Columns {
				fmt.Fprintf(b, "| %s | %s | `%s` | %d |\n", col.Name, col.Type, cell(col.JSONPath), col.Priority)
			}
			b.WriteString("\n")
		}
		if root == nil {
			continue
		}
		for _, part := range []string{"spec", "status"} {
			s := root.Properties[part]
			if s == nil {
				continue
			}
			fmt.Fprintf(b, "### %s `%s`\n\n", n.Kind, part)
			if s.Description != "" {
				fmt.Fprintf(b, "%s\n\n", oneLine(s.Description))
			}
			if rules := validation(s, false); rules != "" {
				fmt.Fprintf(b, "Rules on the whole `%s`: %s\n\n", part, rules)
			}
			b.WriteString("| field | type | required | description | default and validation |\n")
			b.WriteString("| --- | --- | --- | --- | --- |\n")
			fields(b, part, s)
			b.WriteString("\n")
		}
	}
}

// fields writes one row per property below s, depth first, in name order.
func fields(b *strings.Builder, path string, s *schema) {
	names := make([]string, 0, len(s.Properties))
	for name := range s.Properties {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p := s.Properties[name]
		fp := path + "." + name
		req := ""
		if slices.Contains(s.Required, name) {
			req = "yes"
		}
		fmt.Fprintf(b, "| `%s` | %s | %s | %s | %s |\n", fp, typeOf(p), req, cell(oneLine(p.Description)), validation(p, true))
		switch {
		case p.Properties != nil:
			fields(b, fp, p)
		case p.Items != nil && p.Items.Properties != nil:
			fields(b, fp+"[]", p.Items)
		case p.AdditionalProperties != nil && p.AdditionalProperties.Properties != nil:
			fields(b, fp+"[*]", p.AdditionalProperties)
		}
	}
}

func typeOf(s *schema) string {
	switch {
	case s.IntOrString:
		return "integer or string"
	case s.Type == "array" && s.Items != nil:
		t := "[]" + typeOf(s.Items)
		if s.ListType != "" {
			t += " (" + s.ListType
			if len(s.ListMapKeys) > 0 {
				t += " by " + strings.Join(s.ListMapKeys, ", ")
			}
			t += ")"
		}
		return t
	case s.Type == "object" && s.AdditionalProperties != nil:
		return "map[string]" + typeOf(s.AdditionalProperties)
	case s.Format != "":
		return s.Type + " (" + s.Format + ")"
	case s.Type == "":
		if s.PreserveUnknown {
			return "any"
		}
		return "object"
	}
	return s.Type
}

// validation lists a field's default (when withDefault), bounds, enum,
// pattern, the rules on an array's scalar items, and CEL rules.
func validation(s *schema, withDefault bool) string {
	var parts []string
	if withDefault && s.Default != nil {
		parts = append(parts, "default `"+jsonText(s.Default)+"`")
	}
	if len(s.Enum) > 0 {
		var vals []string
		for _, v := range s.Enum {
			vals = append(vals, "`"+jsonText(v)+"`")
		}
		parts = append(parts, "one of "+strings.Join(vals, ", "))
	}
	bound := func(name string, v *float64) {
		if v != nil {
			parts = append(parts, fmt.Sprintf("%s %g", name, *v))
		}
	}
	count := func(name string, v *int64) {
		if v != nil {
			parts = append(parts, fmt.Sprintf("%s %d", name, *v))
		}
	}
	bound("minimum", s.Minimum)
	bound("maximum", s.Maximum)
	count("min length", s.MinLength)
	count("max length", s.MaxLength)
	count("min items", s.MinItems)
	count("max items", s.MaxItems)
	if s.Pattern != "" {
		parts = append(parts, "pattern `"+s.Pattern+"`")
	}
	if s.Items != nil && s.Items.Properties == nil {
		if item := validation(s.Items, false); item != "" {
			parts = append(parts, "each item: "+item)
		}
	}
	for _, v := range s.Validations {
		rule := "rule `" + v.Rule + "`"
		if v.Message != "" {
			rule += ": \"" + v.Message + "\""
		}
		parts = append(parts, rule)
	}
	return cell(strings.Join(parts, "; "))
}

func jsonText(v any) string {
	out, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(out)
}

// oneLine folds a description's line breaks, which a table cell cannot hold.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// cell escapes what would end a Markdown table cell.
func cell(s string) string {
	return strings.ReplaceAll(s, "|", `\|`)
}
