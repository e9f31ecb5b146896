package credentials

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/mailfleet/mailfleet/api/wire"
)

func TestAuthenticate(t *testing.T) {
	demoKey, demoNewKey, otherKey, suspKey, plainKey :=
		newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t)
	v := NewVerifier(newMapSource(
		account("demo", withKeys(demoKey, demoNewKey), withBudget(500), withDomains("example.com"),
			withLabel("1001"), withSuspendedLabel("1002")),
		account("other", withKeys(otherKey), withLabel("2001")),
		account("susp", withKeys(suspKey), withLabel("3001"), suspended()),
		account("plain", withKeys(plainKey)),
	))

	tests := []struct {
		name     string
		username string
		key      string
		want     Identity // zero when ErrInvalid is expected
	}{
		{"account", "demo", demoKey,
			Identity{APIUser: "demo", BudgetPerMinute: 500, MaxRecipients: wire.DefaultMaxRecipients, CheckHeaderFrom: true, AllowedSenderDomains: []string{"example.com"}, ActiveLabels: []string{"1001"}}},
		{"account and label", "demo#1001", demoKey,
			Identity{APIUser: "demo", LabelID: "1001", BudgetPerMinute: 500, MaxRecipients: wire.DefaultMaxRecipients, CheckHeaderFrom: true, AllowedSenderDomains: []string{"example.com"}, ActiveLabels: []string{"1001"}}},
		{"rotated key still valid", "demo", demoNewKey,
			Identity{APIUser: "demo", BudgetPerMinute: 500, MaxRecipients: wire.DefaultMaxRecipients, CheckHeaderFrom: true, AllowedSenderDomains: []string{"example.com"}, ActiveLabels: []string{"1001"}}},
		{"rotated key with label", "demo#1001", demoNewKey,
			Identity{APIUser: "demo", LabelID: "1001", BudgetPerMinute: 500, MaxRecipients: wire.DefaultMaxRecipients, CheckHeaderFrom: true, AllowedSenderDomains: []string{"example.com"}, ActiveLabels: []string{"1001"}}},
		{"default budget", "plain", plainKey,
			Identity{APIUser: "plain", BudgetPerMinute: wire.DefaultBudgetPerMinute, MaxRecipients: wire.DefaultMaxRecipients, CheckHeaderFrom: true}},
		{"wrong key", "demo", otherKey, Identity{}},
		{"empty key", "demo", "", Identity{}},
		{"digest as key", "demo", wire.Digest(demoKey), Identity{}},
		{"unknown user", "nobody", demoKey, Identity{}},
		{"unknown user with label", "nobody#1001", demoKey, Identity{}},
		{"empty username", "", demoKey, Identity{}},
		{"unknown label", "demo#9999", demoKey, Identity{}},
		{"label of another account", "demo#2001", demoKey, Identity{}},
		{"other account's key for its label", "demo#2001", otherKey, Identity{}},
		{"empty label", "demo#", demoKey, Identity{}},
		{"label split at first #", "demo#1001#x", demoKey, Identity{}},
		{"suspended label", "demo#1002", demoKey, Identity{}},
		{"suspended account", "susp", suspKey, Identity{}},
		{"suspended account with active label", "susp#3001", suspKey, Identity{}},
		{"case differs", "DEMO", demoKey, Identity{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := v.Authenticate(tt.username, tt.key)
			if tt.want.APIUser == "" {
				assertInvalid(t, err, tt.username, tt.key)
				if !reflect.DeepEqual(got, Identity{}) {
					t.Errorf("failed Authenticate returned identity %+v, want zero", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Authenticate(%q): %v", tt.username, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Authenticate(%q) = %+v, want %+v", tt.username, got, tt.want)
			}
		})
	}
}

// assertInvalid checks that err is ErrInvalid and gives nothing away.
func assertInvalid(t *testing.T, err error, username, key string) {
	t.Helper()
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	msg := err.Error()
	if key != "" && strings.Contains(msg, key) {
		t.Errorf("error %q contains the key", msg)
	}
	if username != "" && strings.Contains(msg, username) {
		t.Errorf("error %q contains the username", msg)
	}
}

func TestAuthenticateDummyKeyOpensNothing(t *testing.T) {
	// Whatever key the dummy digest was made from, it must not let an
	// unknown user in; try a few plausible inputs.
	v := NewVerifier(newMapSource(account("demo", withKeys(newTestKey(t)))))
	for _, key := range []string{"", "mailfleet: no such api_user", dummyDigest} {
		t.Run(fmt.Sprintf("%q", key), func(t *testing.T) {
			_, err := v.Authenticate("nobody", key)
			assertInvalid(t, err, "nobody", key)
		})
	}
}

func TestAuthenticateIdentityIsACopy(t *testing.T) {
	key := newTestKey(t)
	src := newMapSource(account("demo", withKeys(key), withDomains("example.com")))
	v := NewVerifier(src)
	id, err := v.Authenticate("demo", key)
	if err != nil {
		t.Fatal(err)
	}
	id.AllowedSenderDomains[0] = "evil.example"
	if got := src["demo"].AllowedSenderDomains[0]; got != "example.com" {
		t.Errorf("changing the identity changed the source's account: domain now %q", got)
	}
}

func TestSenderAllowed(t *testing.T) {
	restricted := Identity{AllowedSenderDomains: []string{"example.com", "*.example.org", "Mixed.Example.NET"}}
	tests := []struct {
		name    string
		id      Identity
		address string
		want    bool
	}{
		{"unrestricted", Identity{}, "a@anywhere.test", true},
		{"unrestricted null sender", Identity{}, "", true},
		{"exact", restricted, "a@example.com", true},
		{"exact, address uppercase", restricted, "a@EXAMPLE.Com", true},
		{"exact, entry mixed case", restricted, "a@mixed.example.net", true},
		{"other domain", restricted, "a@example.net", false},
		{"ASCII case folding", Identity{AllowedSenderDomains: []string{"kelvin.test"}}, "a@KELVIN.test", true},
		{"no Unicode case folding", Identity{AllowedSenderDomains: []string{"kelvin.test"}}, "a@\u212Aelvin.test", false},
		{"subdomain of exact entry", restricted, "a@mail.example.com", false},
		{"suffix but not subdomain", restricted, "a@badexample.com", false},
		{"wildcard, subdomain", restricted, "a@mail.example.org", true},
		{"wildcard, deeper subdomain", restricted, "a@x.mail.Example.ORG", true},
		{"wildcard, bare domain", restricted, "a@example.org", false},
		{"wildcard, empty label", restricted, "a@.example.org", false},
		{"wildcard, suffix but not subdomain", restricted, "a@badexample.org", false},
		{"last @ decides", restricted, `"x@evil.test"@example.com`, true},
		{"last @ decides, against", restricted, `"x@example.com"@evil.test`, false},
		{"null sender", restricted, "", false},
		{"no domain", restricted, "postmaster", false},
		{"empty domain", restricted, "a@", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.id.SenderAllowed(tt.address); got != tt.want {
				t.Errorf("SenderAllowed(%q) = %v, want %v", tt.address, got, tt.want)
			}
		})
	}
}

func FuzzAuthenticateUsername(f *testing.F) {
	for _, seed := range []string{"demo", "demo#1001", "demo#", "#1001", "demo#1001#", "", "démo", "demo\x00#1001"} {
		f.Add(seed)
	}
	const key = "fuzz-key"
	v := NewVerifier(newMapSource(account("demo", withKeys(key), withLabel("1001"))))
	f.Fuzz(func(t *testing.T, username string) {
		id, err := v.Authenticate(username, key)
		accepted := username == "demo" || username == "demo#1001"
		switch {
		case accepted && err != nil:
			t.Fatalf("Authenticate(%q) = %v, want success", username, err)
		case !accepted && err == nil:
			t.Fatalf("Authenticate(%q) succeeded as %+v, want ErrInvalid", username, id)
		case !accepted && !errors.Is(err, ErrInvalid):
			t.Fatalf("Authenticate(%q) = %v, want ErrInvalid", username, err)
		}
	})
}

func BenchmarkAuthenticate(b *testing.B) {
	const n = 10000
	accounts := make([]Account, n)
	for i := range accounts {
		accounts[i] = account(fmt.Sprintf("user%05d", i), withKeys(fmt.Sprintf("key-%d", i)), withLabel("1001"))
	}
	path := b.TempDir() + "/credentials.yaml"
	if err := WriteFile(path, accounts); err != nil {
		b.Fatal(err)
	}
	f, err := OpenFile(path, nil)
	if err != nil {
		b.Fatal(err)
	}
	v := NewVerifier(f)
	cases := []struct {
		name, username, key string
		wantErr             bool
	}{
		{"known", "user05000", "key-5000", false},
		{"known with label", "user05000#1001", "key-5000", false},
		{"wrong key", "user05000", "key-1", true},
		{"unknown user", "nobody", "key-5000", true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := v.Authenticate(c.username, c.key); (err != nil) != c.wantErr {
					b.Fatalf("Authenticate(%q) err = %v, want error %v", c.username, err, c.wantErr)
				}
			}
		})
	}
}
