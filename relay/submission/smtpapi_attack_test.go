package submission

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/mailfleet/mailfleet/relay/budget"
)

// withSMTPAPI is a message whose X-SMTPAPI field holds value.
func withSMTPAPI(value, body string) string {
	return "From: a@ifaxin.com\r\nSubject: Hi %name%\r\nX-SMTPAPI: " + value + "\r\n\r\n" + body
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// TestSMTPAPIFanOut: "to" with "sub" makes one message per address, ids
// <id>-<n>, each with its values, the budget taken once per copy, the
// header gone; the reply names the first id's base.
func TestSMTPAPIFanOut(t *testing.T) {
	p := newPolicy(t, 0)
	var hits int
	p.backend.deps.Budget = budgetFunc(func(r budget.Request) budget.Decision { hits += r.Hits; return budget.Allow })
	s := p.session(t, "192.0.2.1", "labelled")
	api := `{"to": ["a@example.com", "b@example.com", "c@example.com"], "sub": {"%name%": ["A", "B", "C"]}, "labelId": "1002", "customArgs": {"k": "v"}}`
	id, err := sendOne(t, s, strings.NewReader(withSMTPAPI(b64(api), "Dear %name%\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.spool.begun) != 3 || hits != 3 {
		t.Fatalf("%d messages, %d budget units; want 3 and 3", len(p.spool.begun), hits)
	}
	for i, m := range p.spool.begun {
		name := string(rune('A' + i))
		body := m.body.String()
		if m.env.ID != id+"-"+string(rune('0'+i)) || !m.committed || m.env.LabelID != "1002" || m.env.CustomArgs["k"] != "v" ||
			m.env.To[0] != strings.ToLower(name)+"@example.com" || body != "From: a@ifaxin.com\r\nSubject: Hi "+name+"\r\n\r\nDear "+name+"\r\n" {
			t.Fatalf("copy %d: %+v\n%q", i, m.env, body)
		}
	}
}

// TestSMTPAPIWithoutSub: "to" alone replaces the RCPT TO recipients of one
// message; a header with neither keeps them, and is removed all the same,
// folded over lines and whatever the case of its name.
func TestSMTPAPIWithoutSub(t *testing.T) {
	p := newPolicy(t, 0)
	s := p.session(t, "192.0.2.1", "labelled")
	if _, err := sendOne(t, s, strings.NewReader(withSMTPAPI(`{"to": ["x@example.com", "y@example.com"]}`, "hi\r\n"))); err != nil {
		t.Fatal(err)
	}
	s.Reset()
	msg := "From: a@ifaxin.com\r\nx-smtpapi: {\"customArgs\":\r\n {\"campaign\": \"7\"}}\r\nSubject: s\r\n\r\nhi\r\n"
	if _, err := sendOne(t, s, strings.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	first, second := p.spool.begun[0], p.spool.begun[1]
	if strings.Join(first.env.To, ",") != "x@example.com,y@example.com" {
		t.Fatalf("to: %v", first.env.To)
	}
	if strings.Join(second.env.To, ",") != "b@example.com" || second.env.CustomArgs["campaign"] != "7" ||
		second.body.String() != "From: a@ifaxin.com\r\nSubject: s\r\n\r\nhi\r\n" {
		t.Fatalf("second: %+v %q", second.env, second.body.String())
	}
}

// Attack: every field of the header is the client's to write. Each of these
// is refused with 550 5.6.0 and a reason, nothing queued, no budget taken.
func TestAttackSMTPAPI(t *testing.T) {
	for _, tt := range []struct {
		name, login, value, want string
	}{
		{"not JSON", "labelled", "not json!", "neither a JSON object nor base64"},
		{"malformed JSON", "labelled", `{"to": [`, "malformed JSON"},
		{"unknown field", "labelled", `{"filters": {}}`, `unknown field "filters"`},
		{"duplicate key", "labelled", `{"to": ["a@example.com"], "to": ["b@example.com"]}`, "appears twice"},
		{"two values", "labelled", `{} {}`, "more than one JSON value"},
		{"sub without to", "labelled", `{"sub": {"%n%": ["x"]}}`, "sub needs to"},
		{"sub values not matching to", "labelled", `{"to": ["a@example.com"], "sub": {"%n%": ["x", "y"]}}`, "2 values for 1 addresses"},
		// A line break in a value would write header fields of the
		// sender's own into each copy.
		{"header injection through sub", "labelled", `{"to": ["a@example.com"], "sub": {"%name%": ["x\r\nBcc: victim@example.com"]}}`, "line break"},
		// A tag with a line break would join the header's last line
		// to the body's first, or leave a bare CR or LF a reader may
		// take for a line's end.
		{"line break in a tag", "labelled", `{"to": ["a@example.com"], "sub": {"\r\n\r": [""]}}`, "control character"},
		{"NUL in a value", "labelled", `{"to": ["a@example.com"], "sub": {"%n%": ["a\u0000b"]}}`, "control character"},
		{"tag too long", "labelled", `{"to": ["a@example.com"], "sub": {"` + strings.Repeat("t", 101) + `": ["x"]}}`, "tags of 1 to 100 bytes"},
		{"label of the account not active", "labelled", `{"labelId": "9999"}`, "not an active label"},
		{"label differing from the login's", "labelled#1001", `{"labelId": 1002}`, "differs from the label of the login"},
		{"label not a number or string", "labelled", `{"labelId": [1]}`, "labelId"},
		{"too many addresses", "labelled", `{"to": ["a@x.example", "b@x.example", "c@x.example", "d@x.example"]}`, "at most 3"},
		{"not an address", "labelled", `{"to": ["a@x.example", "<evil>\r\nRCPT TO:<x@y>"]}`, "is not an address"},
		{"customArgs over the limit", "labelled", `{"customArgs": {"` + strings.Repeat("k", 101) + `": "v"}}`, "customArgs"},
		{"deep nesting", "labelled", `{"customArgs": {"a": [[[[["x"]]]]]}}`, "nested deeper"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newPolicy(t, 0)
			hits := 0
			p.backend.deps.Budget = budgetFunc(func(r budget.Request) budget.Decision { hits += r.Hits; return budget.Allow })
			_, err := sendOne(t, p.session(t, "192.0.2.1", tt.login), strings.NewReader(withSMTPAPI(tt.value, "x\r\n")))
			got := reply(t, err)
			if !strings.HasPrefix(got, "550 5.6.0 ") || !strings.Contains(got, tt.want) || strings.ContainsAny(got, "\r\n") {
				t.Fatalf("reply %q, want 550 5.6.0 saying %q", got, tt.want)
			}
			for _, m := range p.spool.begun {
				if m.committed {
					t.Fatal("a message was queued")
				}
			}
			if hits != 0 {
				t.Fatalf("%d budget units taken", hits)
			}
		})
	}
}

// Attack: two X-SMTPAPI fields, one a proxy or filter might read and the
// other the relay, are refused rather than one picked.
func TestAttackTwoSMTPAPIFields(t *testing.T) {
	p := newPolicy(t, 0)
	msg := "From: a@ifaxin.com\r\nX-SMTPAPI: {}\r\nX-Smtpapi: {\"to\": [\"x@example.com\"]}\r\n\r\nx\r\n"
	if got := reply(t, mustErr(sendOne(t, p.session(t, "192.0.2.1", "labelled"), strings.NewReader(msg)))); !strings.Contains(got, "2 X-SMTPAPI fields") {
		t.Fatalf("reply %q", got)
	}
}

// Attack: copies times size bounded — a 1 MB body to a hundred addresses
// with substitutions would be 100 MB of queue writes from one DATA.
func TestAttackSMTPAPIFanOutSize(t *testing.T) {
	p := newPolicy(t, 0)
	p.backend.deps.Auth = accounts{"big": {APIUser: "big", MaxRecipients: 100, BudgetPerMinute: 1000}}
	var to, values []string
	for i := range 100 {
		to = append(to, "r"+strings.Repeat("x", i%10)+"@example.com")
		values = append(values, "v")
	}
	api := `{"to": ["` + strings.Join(to, `","`) + `"], "sub": {"%v%": ["` + strings.Join(values, `","`) + `"]}}`
	body := strings.Repeat(strings.Repeat("a", 998)+"\r\n", 1000)
	got := reply(t, mustErr(sendOne(t, p.session(t, "192.0.2.1", "big"), strings.NewReader(withSMTPAPI(api, body)))))
	if !strings.HasPrefix(got, "552 5.3.4 ") || len(p.spool.begun) != 0 {
		t.Fatalf("reply %q, %d messages begun", got, len(p.spool.begun))
	}
}

// Attack: a header section of megabytes, held in memory to find the field.
func TestAttackHugeHeader(t *testing.T) {
	p := newPolicy(t, 0)
	msg := strings.Repeat("X-Pad: "+strings.Repeat("a", 990)+"\r\n", 3000) + "\r\nx\r\n"
	got := reply(t, mustErr(sendOne(t, p.session(t, "192.0.2.1", "labelled"), strings.NewReader(msg))))
	if got != "552 5.3.4 Message header section too large" {
		t.Fatalf("reply %q", got)
	}
}

// Attack: a value rewrites the From field after the From rule passed it —
// the account may send from ifaxin.com only, and each copy would show
// ceo@bank.example. The rule is applied to each copy as substituted.
func TestAttackSMTPAPISubRewritesFrom(t *testing.T) {
	p := newPolicy(t, 0)
	hits := 0
	p.backend.deps.Budget = budgetFunc(func(r budget.Request) budget.Decision { hits += r.Hits; return budget.Allow })
	api := `{"to": ["a@example.com", "b@example.com"], "sub": {"a@ifaxin.com": ["a@ifaxin.com", "ceo@bank.example"]}}`
	msg := "From: a@ifaxin.com\r\nX-SMTPAPI: " + api + "\r\n\r\nx\r\n"
	got := reply(t, mustErr(sendOne(t, p.session(t, "192.0.2.1", "restricted"), strings.NewReader(msg))))
	if got != "550 5.7.1 From header address <ceo@bank.example> not allowed for this account" || len(p.spool.begun) != 0 || hits != 0 {
		t.Fatalf("reply %q, %d messages begun, %d budget units", got, len(p.spool.begun), hits)
	}
}

// Attack: a value renames a field to X-SMTPAPI, so that each copy would
// reach the next hop with a header the relay removed — one that a
// provider behind it (a smarthost that reads X-SMTPAPI) would apply,
// fanning out past this account's budget.
func TestAttackSMTPAPISubWritesSMTPAPIField(t *testing.T) {
	for name, tt := range map[string]struct{ sub, head string }{
		"a field renamed":         {`{"X-Note": ["X-SMTPAPI"]}`, "X-Note: {\"to\": [\"many@example.com\"]}\r\n"},
		"a continuation unfolded": {`{" Y": ["X-SMTPAPI: {}"]}`, "X-Note: a\r\n Y\r\n"},
	} {
		t.Run(name, func(t *testing.T) {
			p := newPolicy(t, 0)
			api := `{"to": ["a@example.com"], "sub": ` + tt.sub + `}`
			msg := "From: a@ifaxin.com\r\n" + tt.head + "X-SMTPAPI: " + b64(api) + "\r\n\r\nx\r\n"
			got := reply(t, mustErr(sendOne(t, p.session(t, "192.0.2.1", "labelled"), strings.NewReader(msg))))
			if !strings.HasPrefix(got, "550 5.6.0 ") || !strings.Contains(got, "X-SMTPAPI field") || len(p.spool.begun) != 0 {
				t.Fatalf("reply %q, %d messages begun", got, len(p.spool.begun))
			}
		})
	}
}

// Attack: a three-byte tag written a million times, each replaced by a
// 10,000-byte value: 3 MB in, 10 GB out, in memory or in the queue. The
// copies are bounded after the substitution as before it, nothing is
// committed and no budget taken.
func TestAttackSMTPAPISubstitutionBomb(t *testing.T) {
	value := strings.Repeat("v", 10_000)
	api := b64(`{"to": ["a@example.com"], "sub": {"%a%": ["` + value + `"]}}`)
	for name, tt := range map[string]struct{ msg, want string }{
		"in the body": {"From: a@ifaxin.com\r\nX-SMTPAPI: " + api + "\r\n\r\n" + strings.Repeat(strings.Repeat("%a%", 300)+"\r\n", 3000),
			"552 5.3.4 Message times its X-SMTPAPI recipients is over 67108864 bytes; send fewer at once"},
		"in the header": {"From: a@ifaxin.com\r\nX-SMTPAPI: " + api + "\r\nSubject: " + strings.Repeat(" %a%\r\n", 1000) + "\r\nx\r\n",
			"552 5.3.4 Message header section too large"},
	} {
		t.Run(name, func(t *testing.T) {
			p := newPolicy(t, 0)
			hits := 0
			p.backend.deps.Budget = budgetFunc(func(r budget.Request) budget.Decision { hits += r.Hits; return budget.Allow })
			got := reply(t, mustErr(sendOne(t, p.session(t, "192.0.2.1", "labelled"), strings.NewReader(tt.msg))))
			if got != tt.want || hits != 0 {
				t.Fatalf("reply %q, %d budget units", got, hits)
			}
			for _, m := range p.spool.begun {
				if m.committed || !m.aborted || m.body.Len() > 64<<20 {
					t.Fatalf("copy %s: committed %v, aborted %v, %d bytes", m.env.ID, m.committed, m.aborted, m.body.Len())
				}
			}
		})
	}
}

func mustErr(_ string, err error) error { return err }
