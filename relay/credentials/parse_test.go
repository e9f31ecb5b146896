package credentials

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/mailfleet/mailfleet/api/wire"
)

var (
	digestA = wire.Digest("key-a")
	digestB = wire.Digest("key-b")
)

func TestParseValid(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []Account
	}{
		{
			name: "full YAML",
			doc: `
accounts:
- apiUser: demo
  keyDigests: ["` + digestA + `", "` + digestB + `"]
  budgetPerMinute: 500
  allowedSenderDomains: [example.com, "*.Example.ORG"]
  suspended: true
  labels:
  - id: "1001"
  - id: news.letter_2
    suspended: true
- apiUser: other
  keyDigests: ["` + digestB + `"]
`,
			want: []Account{
				{
					APIUser:              "demo",
					KeyDigests:           []string{digestA, digestB},
					BudgetPerMinute:      500,
					AllowedSenderDomains: []string{"example.com", "*.example.org"},
					Suspended:            true,
					Labels:               []Label{{ID: "1001"}, {ID: "news.letter_2", Suspended: true}},
				},
				{APIUser: "other", KeyDigests: []string{digestB}},
			},
		},
		{
			name: "JSON",
			doc:  `{"accounts": [{"apiUser": "demo", "keyDigests": ["` + digestA + `"], "labels": [{"id": "1001"}]}]}`,
			want: []Account{{APIUser: "demo", KeyDigests: []string{digestA}, Labels: []Label{{ID: "1001"}}}},
		},
		{
			name: "explicit empty list",
			doc:  "accounts: []\n",
			want: []Account{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.doc))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	ok := docOf // reads as "a document otherwise fine, except..."
	tests := []struct {
		name string
		doc  string
		want []string // substrings the error must contain
	}{
		{"empty document", "", []string{"empty document"}},
		{"whitespace only", " \n\t\n", []string{"empty document"}},
		{"only an unknown field", "other: 1\n", []string{`unknown field "other"`}},
		{"accounts key absent", "{}\n", []string{"missing accounts"}},
		{"accounts null", "accounts: null\n", []string{"missing accounts"}},
		{"not a mapping", "- a\n- b\n", []string{"cannot unmarshal"}},
		{"garbage", "accounts: [\n", []string{"yaml"}},
		{"unknown top-level field", "accounts: []\nextra: true\n", []string{`unknown field "extra"`}},
		{"unknown account field", "accounts:\n- apiUser: demo\n  keyDigests: [\"" + digestA + "\"]\n  suspend: true\n",
			[]string{`unknown field "suspend"`}},
		{"unknown label field", "accounts:\n- apiUser: demo\n  keyDigests: [\"" + digestA + "\"]\n  labels: [{id: a, paused: true}]\n",
			[]string{`unknown field "paused"`}},
		{"duplicate field", "accounts:\n- apiUser: demo\n  apiUser: demo2\n  keyDigests: [\"" + digestA + "\"]\n",
			[]string{"apiUser"}},
		{"apiUser unquoted boolean", "accounts: [{apiUser: yes, keyDigests: [\"" + digestA + "\"]}]",
			[]string{"accounts[0]: apiUser: want a quoted string"}},
		{"apiUser unquoted number", "accounts: [{apiUser: 1001, keyDigests: [\"" + digestA + "\"]}]",
			[]string{"accounts[0]: apiUser: want a quoted string"}},
		{"label id unquoted octal", "accounts: [{apiUser: demo, keyDigests: [\"" + digestA + "\"], labels: [{id: \"1\"}, {id: 0010}]}]",
			[]string{"accounts[0]: labels[1]: id: want a quoted string"}},
		{"label id unquoted number", "accounts: [{apiUser: demo, keyDigests: [\"" + digestA + "\"], labels: [{id: 1001}]}]",
			[]string{"accounts[0]: labels[0]: id: want a quoted string"}},
		{"apiUser missing", ok(account("", withKeys("k"))), []string{"accounts[0]: apiUser: required"}},
		{"apiUser with #", ok(account("de#mo", withKeys("k"))), []string{"accounts[0]: apiUser", "de#mo", "want 1-64"}},
		{"apiUser leading dot", ok(account(".demo", withKeys("k"))), []string{"accounts[0]: apiUser"}},
		{"apiUser too long", ok(account(strings.Repeat("a", 65), withKeys("k"))), []string{"accounts[0]: apiUser"}},
		{"apiUser duplicate", ok(account("demo", withKeys("k")), account("demo", withKeys("k"))),
			[]string{"accounts[1] (demo): apiUser already used by accounts[0]"}},
		{"no keyDigests", ok(account("demo")), []string{"accounts[0] (demo): keyDigests: at least one required"}},
		{"keyDigest without scheme", ok(account("demo", withRawDigests(strings.TrimPrefix(digestA, "sha256:")))),
			[]string{"accounts[0] (demo): keyDigests[0]: want sha256:<64 lowercase hex digits>"}},
		{"keyDigest uppercase", ok(account("demo", withRawDigests(digestA, strings.ToUpper(digestA)))),
			[]string{"keyDigests[1]: want sha256"}},
		{"keyDigest short", ok(account("demo", withRawDigests(digestA[:70]))), []string{"keyDigests[0]"}},
		{"keyDigest plaintext", ok(account("demo", withRawDigests("hunter2"))), []string{"keyDigests[0]"}},
		{"negative budget", ok(account("demo", withKeys("k"), withBudget(-1))),
			[]string{"accounts[0] (demo): budgetPerMinute -1: want 0"}},
		{"empty domain", ok(account("demo", withKeys("k"), withDomains(""))),
			[]string{"accounts[0] (demo): allowedSenderDomains[0]"}},
		{"domain with @", ok(account("demo", withKeys("k"), withDomains("example.com", "a@example.com"))),
			[]string{"allowedSenderDomains[1]", "want a domain"}},
		{"domain bare wildcard", ok(account("demo", withKeys("k"), withDomains("*"))), []string{"allowedSenderDomains[0]"}},
		{"domain with Kelvin sign", ok(account("demo", withKeys("k"), withDomains("\u212Aexample.com"))), []string{"allowedSenderDomains[0]"}},
		{"domain trailing dot", ok(account("demo", withKeys("k"), withDomains("example.com."))), []string{"allowedSenderDomains[0]"}},
		{"domain non-ASCII", ok(account("demo", withKeys("k"), withDomains("bücher.example"))),
			[]string{"allowedSenderDomains[0]", "xn--"}},
		{"label id missing", ok(account("demo", withKeys("k"), withLabel(""))),
			[]string{"accounts[0] (demo): labels[0]: id required"}},
		{"label id with #", ok(account("demo", withKeys("k"), withLabel("a#b"))),
			[]string{"accounts[0] (demo): labels[0]: id", "want 1-64"}},
		{"label id duplicate", ok(account("demo", withKeys("k"), withLabel("1001"), withSuspendedLabel("1001"))),
			[]string{"accounts[0] (demo): labels[1]: id 1001 already used by labels[0]"}},
		{"every problem reported", ok(account("demo"), account("x#y", withKeys("k"))),
			[]string{"accounts[0] (demo): keyDigests", "accounts[1]: apiUser"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.doc))
			if err == nil {
				t.Fatalf("Parse accepted %q as %+v", tt.doc, got)
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestParseCapsProblems(t *testing.T) {
	var accounts []Account
	for i := range 3 * wire.MaxProblems {
		accounts = append(accounts, account(fmt.Sprintf("u%d", i)))
	}
	_, err := Parse([]byte(docOf(accounts...)))
	if err == nil {
		t.Fatal("Parse accepted accounts without keys")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != wire.MaxProblems+1 {
		t.Errorf("error has %d lines, want %d", len(lines), wire.MaxProblems+1)
	}
	if want := fmt.Sprintf("and %d more problems", 2*wire.MaxProblems); lines[len(lines)-1] != want {
		t.Errorf("last line %q, want %q", lines[len(lines)-1], want)
	}
}

// withRawDigests adds digests verbatim, well formed or not.
func withRawDigests(digests ...string) accountOpt {
	return func(a *Account) { a.KeyDigests = append(a.KeyDigests, digests...) }
}

// docOf renders accounts as a credentials document without validating them.
func docOf(accounts ...Account) string {
	if accounts == nil {
		accounts = []Account{}
	}
	data, err := yaml.Marshal(wire.Shard{Accounts: &accounts})
	if err != nil {
		panic(err) // plain structs always marshal
	}
	return string(data)
}

func FuzzParse(f *testing.F) {
	seeds := []string{
		docOf(account("demo", withKeys("k"), withBudget(10), withDomains("example.com", "*.example.org"),
			withLabel("1001"), withSuspendedLabel("1002"))),
		docOf(account("a", withKeys("k1", "k2")), account("b", withKeys("k3"), suspended())),
		`{"accounts": [{"apiUser": "demo", "keyDigests": ["` + digestA + `"]}]}`,
		`{"accounts": []}`,
		"accounts: []\n",
		"accounts:\n- apiUser: demo\n  keyDigests: [\"" + digestA + "\"]\n  labels: [{id: 0x10}]\n",
		"accounts: [{apiUser: Demo, keyDigests: [\"" + digestA + "\"], allowedSenderDomains: [EXAMPLE.COM]}]",
		"",
		"\x00\xff garbage",
		"accounts: [\n",
		"&a [*a]",
		"accounts: !!binary aGVsbG8=",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		accounts, err := Parse(data)
		if err != nil {
			return
		}
		checkAccepted(t, accounts)
		// What Parse accepts must survive a round trip through WriteFile's
		// encoding unchanged.
		again, err := Parse([]byte(docOf(accounts...)))
		if err != nil {
			t.Fatalf("re-parsing accepted accounts: %v", err)
		}
		if !equalAccounts(accounts, again) {
			t.Fatalf("round trip changed accounts:\n%+v\n%+v", accounts, again)
		}
	})
}

// checkAccepted asserts the guarantees Parse gives about what it returns,
// independently of the validation code.
func checkAccepted(t *testing.T, accounts []Account) {
	t.Helper()
	users := map[string]bool{}
	for i, a := range accounts {
		if a.APIUser == "" || strings.Contains(a.APIUser, "#") || users[a.APIUser] {
			t.Fatalf("accounts[%d]: bad or repeated apiUser %q accepted", i, a.APIUser)
		}
		users[a.APIUser] = true
		if len(a.KeyDigests) == 0 {
			t.Fatalf("accounts[%d]: accepted without key digests", i)
		}
		for _, d := range a.KeyDigests {
			if !wire.ValidDigest(d) {
				t.Fatalf("accounts[%d]: malformed digest %q accepted", i, d)
			}
		}
		if a.BudgetPerMinute < 0 {
			t.Fatalf("accounts[%d]: negative budget accepted", i)
		}
		for _, d := range a.AllowedSenderDomains {
			if d == "" || d != strings.ToLower(d) || strings.Contains(d, "@") {
				t.Fatalf("accounts[%d]: domain %q accepted", i, d)
			}
		}
		labels := map[string]bool{}
		for _, l := range a.Labels {
			if l.ID == "" || strings.Contains(l.ID, "#") || labels[l.ID] {
				t.Fatalf("accounts[%d]: bad or repeated label id %q accepted", i, l.ID)
			}
			labels[l.ID] = true
		}
	}
}

// equalAccounts compares accounts treating nil and empty lists alike, since
// the encoding omits empty lists.
func equalAccounts(a, b []Account) bool {
	norm := func(accounts []Account) []Account {
		out := make([]Account, len(accounts))
		for i, acct := range accounts {
			if len(acct.AllowedSenderDomains) == 0 {
				acct.AllowedSenderDomains = nil
			}
			if len(acct.Labels) == 0 {
				acct.Labels = nil
			}
			out[i] = acct
		}
		return out
	}
	return reflect.DeepEqual(norm(a), norm(b))
}
