package envtestkit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// YAMLDoc is one document of a stream of manifests: as written (for strict
// typed decoding) and decoded.
type YAMLDoc struct {
	Raw    []byte
	Object *unstructured.Unstructured
}

// DecodeYAML splits a stream of YAML documents and decodes each; documents
// holding nothing (empty, or only comments) are skipped. An error from a
// document quotes it.
func DecodeYAML(data []byte) ([]YAMLDoc, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs []YAMLDoc
	for {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		js, err := yaml.YAMLToJSON(raw)
		if err != nil {
			return nil, fmt.Errorf("%w in:\n%s", err, raw)
		}
		if s := strings.TrimSpace(string(js)); s == "null" || s == "" {
			continue
		}
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(js); err != nil {
			return nil, fmt.Errorf("%w in:\n%s", err, raw)
		}
		docs = append(docs, YAMLDoc{Raw: raw, Object: obj})
	}
}
