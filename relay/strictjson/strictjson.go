// Package strictjson walks a JSON document for what encoding/json lets
// through quietly or cannot survive: a key an object holds twice (the
// decoder keeps the last, so a proxy that reads the first sees another
// request), a key the receiving type does not have, a list longer than the
// receiver will take (decoded whole before it could be refused), and
// nesting that would recurse without end. The HTTP send API's body and the
// SMTP X-SMTPAPI header are both checked with it before they are decoded.
package strictjson

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
)

// Rules say what a document may hold.
type Rules struct {
	// Known are the keys an object may hold, by its place in the document
	// (see Path); objects elsewhere may hold any.
	Known map[string]map[string]bool
	// MaxDepth bounds the nesting of objects and lists: each level is a
	// stack frame of the walk, and a body of '[' would otherwise be a
	// fatal stack overflow, not an error.
	MaxDepth int
	// MaxItems bounds every list; 0 leaves lists unbounded.
	MaxItems int
}

// A value's path names its place: "" for the document, "attachments" for
// that key's value, "attachments[]" for an item of that list,
// "a.b" for key b of the object under a.

// TooDeep is a document nested deeper than Rules.MaxDepth.
type TooDeep struct{ Max int }

func (t *TooDeep) Error() string {
	return fmt.Sprintf("objects and lists are nested deeper than %d levels", t.Max)
}

// DuplicateKey is a key an object holds twice.
type DuplicateKey struct{ Key string }

func (d *DuplicateKey) Error() string {
	return fmt.Sprintf("key %q appears twice in one object", d.Key)
}

// UnknownKey is a key Rules.Known does not list for its object's place.
type UnknownKey struct{ Key string }

func (u *UnknownKey) Error() string { return fmt.Sprintf("unknown field %.64q", u.Key) }

// LongList is a list of more than Rules.MaxItems items, at Path.
type LongList struct {
	Path string
	Max  int
}

func (l *LongList) Error() string { return fmt.Sprintf("%s: more than %d items", l.Path, l.Max) }

// Check walks doc and returns the first thing r refuses, nil when there is
// none. A syntax error is left to the decoder that follows, which names it.
func Check(doc []byte, r Rules) error {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	err := (&walker{dec: dec, rules: r}).value("", 0)
	var dup *DuplicateKey
	var unknown *UnknownKey
	var long *LongList
	var deep *TooDeep
	if errors.As(err, &dup) || errors.As(err, &unknown) || errors.As(err, &long) || errors.As(err, &deep) {
		return err
	}
	return nil
}

// walker reads a document's tokens.
type walker struct {
	dec   *json.Decoder
	rules Rules
}

func (w *walker) value(path string, depth int) error {
	tok, err := w.dec.Token()
	if err != nil {
		return err
	}
	if (tok == json.Delim('{') || tok == json.Delim('[')) && depth >= w.rules.MaxDepth {
		return &TooDeep{w.rules.MaxDepth}
	}
	switch tok {
	case json.Delim('{'):
		if err := w.object(path, depth); err != nil {
			return err
		}
	case json.Delim('['):
		for n := 0; w.dec.More(); n++ {
			if n == w.rules.MaxItems && n > 0 {
				return &LongList{Path: cmp.Or(path, "the document"), Max: n}
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
	known, checked := w.rules.Known[path]
	seen := map[string]bool{}
	for w.dec.More() {
		k, err := w.dec.Token()
		if err != nil {
			return err
		}
		key, _ := k.(string)
		switch {
		case seen[key]:
			return &DuplicateKey{key}
		case checked && !known[key]:
			return &UnknownKey{key}
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
