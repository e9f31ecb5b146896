package strictjson

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestDescribe(t *testing.T) {
	type doc struct {
		To   []string          `json:"to"`
		Args map[string]string `json:"args"`
		N    int               `json:"n"`
	}
	cases := map[string]struct{ body, want string }{
		"list wanted":   {`{"to": "a@b.example"}`, `field "to": want a list`},
		"object wanted": {`{"args": [1]}`, `field "args": want an object`},
		"number wanted": {`{"n": "x"}`, `field "n": want a number`},
		"empty":         {``, "malformed JSON: empty or ends early"},
		"ends early":    {`{"to": [`, "malformed JSON: empty or ends early"},
		"two values":    {`{} {}`, "more than one JSON value"},
		"garbage":       {`{"to": x}`, "malformed JSON at byte"},
		"unknown":       {`{"secret-key-xyz": 1}`, `unknown field "secret-key-xyz"`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			dec := json.NewDecoder(strings.NewReader(c.body))
			dec.DisallowUnknownFields()
			var d doc
			err := dec.Decode(&d)
			if err == nil && name == "two values" {
				err = json.Unmarshal([]byte(c.body), &d)
			}
			if err == nil {
				t.Fatalf("%q decoded; want an error", c.body)
			}
			if got := Describe(err); !strings.Contains(got, c.want) {
				t.Errorf("Describe(%v) = %q, want it to hold %q", err, got, c.want)
			}
		})
	}
}

// TestDescribeEchoesNoValue: a value the client sent is never repeated
// back, only field names and offsets.
func TestDescribeEchoesNoValue(t *testing.T) {
	var d struct {
		N int `json:"n"`
	}
	err := json.Unmarshal([]byte(`{"n": "hunter2-api-key"}`), &d)
	if got := Describe(err); strings.Contains(got, "hunter2") {
		t.Errorf("Describe = %q: echoes the value", got)
	}
}
