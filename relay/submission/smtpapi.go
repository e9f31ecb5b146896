package submission

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"slices"
	"strconv"
	"strings"

	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/smtpd"
	"github.com/mailfleet/mailfleet/relay/strictjson"
)

// The X-SMTPAPI header, as SendCloud and EngageLab define it for SMTP
// submissions: a JSON object, base64-encoded or plain, that the relay
// removes from the message and applies: "to" sends one copy to each
// address listed (instead of to the RCPT TO addresses), "sub" gives each
// of those copies its own values for tags in the message, "labelId"
// names the account's label, "customArgs" are the sender's own values,
// carried into the message's events. docs/api.md ("X-SMTPAPI") has the
// whole contract.
const smtpAPIHeader = "X-Smtpapi"

// Limits of an X-SMTPAPI header and of what it makes.
const (
	// maxHeadBytes bounds a message's header section, read whole before
	// the body so that the X-SMTPAPI field can be taken out of it.
	maxHeadBytes = 2 << 20
	// maxSMTPAPIBytes is the most an X-SMTPAPI value may hold, as the
	// services that define it allow.
	maxSMTPAPIBytes = 1 << 20
	// maxSubTags, maxSubTag and maxSubValue bound the substitutions: the
	// tags, a tag's bytes, a value's bytes.
	maxSubTags  = 100
	maxSubTag   = 100
	maxSubValue = 10_000
	// maxFanOutBytes bounds what one DATA may write to the queue once
	// copied for each recipient of "to" with "sub", before and after the
	// substitutions.
	maxFanOutBytes = 64 << 20
	// maxCustomArgs, maxCustomKey and maxCustomValue bound customArgs, in
	// the HTTP API and here.
	maxCustomArgs  = 50
	maxCustomKey   = 100
	maxCustomValue = 1000
)

// smtpAPI is what an X-SMTPAPI header asks.
type smtpAPI struct {
	To         []string            `json:"to"`
	Sub        map[string][]string `json:"sub"`
	LabelID    json.RawMessage     `json:"labelId"`
	CustomArgs map[string]string   `json:"customArgs"`
}

// smtpAPIError is an X-SMTPAPI header the relay refuses, with the reason
// the client is told.
func smtpAPIError(format string, args ...any) error {
	return &smtpd.Error{Reply: smtpd.ReplySMTPAPIInvalid.With(fmt.Sprintf(format, args...))}
}

// takeSMTPAPI finds the X-SMTPAPI field in head, a message's header
// section, and returns head without it and what it asks; nil when there
// is none.
func takeSMTPAPI(head []byte) ([]byte, *smtpAPI, error) {
	rest, values := removeField(head, smtpAPIHeader)
	switch len(values) {
	case 0:
		return head, nil, nil
	case 1:
	default:
		return nil, nil, smtpAPIError("the message has %d X-SMTPAPI fields; send one", len(values))
	}
	api, err := parseSMTPAPI(values[0])
	if err != nil {
		return nil, nil, err
	}
	return rest, api, nil
}

// parseSMTPAPI reads a value, base64 or plain JSON, strictly: one object,
// known keys only (a key the relay does not know would be ignored, and
// the client would not learn that its setting did nothing).
func parseSMTPAPI(value string) (*smtpAPI, error) {
	if len(value) > maxSMTPAPIBytes {
		return nil, smtpAPIError("the X-SMTPAPI value is over %d bytes", maxSMTPAPIBytes)
	}
	// A client's mail library may write a long value as RFC 2047 encoded
	// words (Python's email package does, for a base64 value longer than
	// a line): decoded, they are the value it was given.
	if decoded, err := new(mime.WordDecoder).DecodeHeader(value); err == nil {
		value = decoded
	}
	raw := []byte(value)
	if !strings.HasPrefix(value, "{") {
		decoded, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(value), ""))
		if err != nil {
			return nil, smtpAPIError("X-SMTPAPI is neither a JSON object nor base64 of one")
		}
		raw = decoded
	}
	// Keys twice (encoding/json would keep the last) and nesting deeper
	// than the header's three levels are refused before decoding.
	if err := strictjson.Check(raw, strictjson.Rules{MaxDepth: 4}); err != nil {
		return nil, smtpAPIError("X-SMTPAPI: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var api smtpAPI
	if err := dec.Decode(&api); err != nil {
		problem := strictjson.Describe(err)
		if strings.HasPrefix(problem, "unknown field ") {
			problem += " (known: to, sub, labelId, customArgs)"
		}
		return nil, smtpAPIError("X-SMTPAPI: %s", problem)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, smtpAPIError("X-SMTPAPI holds more than one JSON value")
	}
	return &api, nil
}

// labelID is the header's labelId: a number or a string, "" when absent.
func (a *smtpAPI) labelID() (string, error) {
	if len(a.LabelID) == 0 || string(a.LabelID) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(a.LabelID, &s); err == nil {
		return s, nil
	}
	var n json.Number
	if err := json.Unmarshal(a.LabelID, &n); err == nil {
		if _, err := strconv.ParseUint(n.String(), 10, 63); err == nil {
			return n.String(), nil
		}
	}
	return "", smtpAPIError("labelId: want a label id, a string or a whole number")
}

// checkSub checks the substitutions against the "to" list they go with.
func (a *smtpAPI) checkSub() error {
	if len(a.Sub) == 0 {
		return nil
	}
	if len(a.To) == 0 {
		return smtpAPIError("sub needs to: one value per address of to")
	}
	if len(a.Sub) > maxSubTags {
		return smtpAPIError("sub: at most %d tags", maxSubTags)
	}
	for tag, values := range a.Sub {
		switch {
		case tag == "" || len(tag) > maxSubTag:
			return smtpAPIError("sub: tags of 1 to %d bytes", maxSubTag)
		case hasControl(tag):
			// A tag with a line break would let a substitution join or
			// split lines, and so move fields into or out of the header.
			return smtpAPIError("sub %.64q: a tag holds a control character", tag)
		case len(values) != len(a.To):
			return smtpAPIError("sub %.64q: %d values for %d addresses in to", tag, len(values), len(a.To))
		}
		for _, v := range values {
			if len(v) > maxSubValue {
				return smtpAPIError("sub %.64q: a value over %d bytes", tag, maxSubValue)
			}
			// A value is put into the message as it is, the header
			// section included: a line break in it would let the sender
			// write header fields of its own into each copy.
			if strings.ContainsAny(v, "\r\n") {
				return smtpAPIError("sub %.64q: a value holds a line break", tag)
			}
			if hasControl(v) {
				return smtpAPIError("sub %.64q: a value holds a control character", tag)
			}
		}
	}
	return nil
}

// hasControl reports a control character other than a tab: nothing a tag
// or a value of a text needs, and NUL, CR or LF would change the message's
// lines.
func hasControl(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return r != '\t' && (r < 0x20 || r == 0x7f) }) >= 0
}

// CheckCustomArgs checks a message's customArgs, in the HTTP API and in
// X-SMTPAPI alike; the error says what is wrong, for the client.
func CheckCustomArgs(args map[string]string) error {
	if len(args) > maxCustomArgs {
		return fmt.Errorf("customArgs: at most %d", maxCustomArgs)
	}
	for k, v := range args {
		switch {
		case k == "" || len(k) > maxCustomKey:
			return fmt.Errorf("customArgs: keys of 1 to %d bytes", maxCustomKey)
		case len(v) > maxCustomValue:
			return fmt.Errorf("customArgs %.64q: a value over %d bytes", k, maxCustomValue)
		}
	}
	return nil
}

// substituter replaces the tags of sub with the values of one address of
// "to". Tags and values hold no line break (checkSub), so a substitution
// stays within its line: it cannot move the end of the header section or
// start a line of its own.
type substituter struct {
	tags []string // longest first: "%name%" must not be replaced inside "%name%s%"
	sub  map[string][]string
}

func newSubstituter(sub map[string][]string) substituter {
	tags := make([]string, 0, len(sub))
	for tag := range sub {
		tags = append(tags, tag)
	}
	slices.SortFunc(tags, func(a, b string) int {
		if d := len(b) - len(a); d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	return substituter{tags: tags, sub: sub}
}

// replacer replaces every tag with its value for the i-th address of "to".
func (s substituter) replacer(i int) *strings.Replacer {
	pairs := make([]string, 0, 2*len(s.tags))
	for _, tag := range s.tags {
		pairs = append(pairs, tag, s.sub[tag][i])
	}
	return strings.NewReplacer(pairs...)
}

// errSubstitutedTooBig stops a substitution whose result is over its
// bound: a short tag written a million times, each replaced by a long
// value, would otherwise grow a message a thousandfold.
var errSubstitutedTooBig = errors.New("substituted message over its bound")

// cappedWriter passes at most *left bytes to w, then fails; left is shared
// by the copies of one message, so that their sum is bounded.
type cappedWriter struct {
	w    io.Writer
	left *int64
}

func (c cappedWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > *c.left {
		return 0, errSubstitutedTooBig
	}
	*c.left -= int64(len(p))
	return c.w.Write(p)
}

func (c cappedWriter) WriteString(s string) (int, error) {
	if int64(len(s)) > *c.left {
		return 0, errSubstitutedTooBig
	}
	*c.left -= int64(len(s))
	return io.WriteString(c.w, s)
}

// checkLabel applies the header's labelId to id: it must be an active
// label of the account, and agree with the label the client logged in
// with, if any.
func checkLabel(id *credentials.Identity, labelID string) error {
	switch {
	case labelID == "" || labelID == id.LabelID:
		return nil
	case id.LabelID != "":
		return smtpAPIError("labelId %.64q differs from the label of the login (%s); send one of them", labelID, id.LabelID)
	case !slices.Contains(id.ActiveLabels, labelID):
		return smtpAPIError("labelId %.64q is not an active label of this account", labelID)
	}
	id.LabelID = labelID
	return nil
}

// removeField returns head without the fields named name (with their
// folded lines), and their values unfolded.
func removeField(head []byte, name string) ([]byte, []string) {
	var out []byte
	var values []string
	for len(head) > 0 {
		end := fieldEnd(head)
		field := head[:end]
		head = head[end:]
		colon := bytes.IndexByte(field, ':')
		if colon > 0 && strings.EqualFold(string(bytes.TrimRight(field[:colon], " \t")), name) {
			values = append(values, unfold(field[colon+1:]))
			continue
		}
		out = append(out, field...)
	}
	return out, values
}

// fieldEnd is where the field that starts head ends: after its last line,
// the lines that follow it starting with a space or a tab included.
func fieldEnd(head []byte) int {
	end := 0
	for {
		nl := bytes.IndexByte(head[end:], '\n')
		if nl < 0 {
			return len(head)
		}
		end += nl + 1
		if end == len(head) || (head[end] != ' ' && head[end] != '\t') {
			return end
		}
	}
}

func unfold(v []byte) string {
	s := strings.NewReplacer("\r\n", "", "\n", "").Replace(string(v))
	return strings.TrimSpace(s)
}
