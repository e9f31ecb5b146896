package smtpd

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
)

// mailboxReference is RFC 5321's Mailbox ABNF written out as a regular
// expression, independently of ParseMailbox; address literals are checked
// for a valid IP below it.
var mailboxReference = func() *regexp.Regexp {
	atext := "[A-Za-z0-9!#$%&'*+\\-/=?^_`{|}~]"
	dotString := fmt.Sprintf(`%s+(?:\.%s+)*`, atext, atext)
	quoted := `"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"`
	subDomain := `[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?`
	domain := fmt.Sprintf(`%s(?:\.%s)*`, subDomain, subDomain)
	literal := `\[(?:[0-9.]+|[Ii][Pp][Vv]6:[0-9A-Fa-f:.]+)\]`
	return regexp.MustCompile(fmt.Sprintf(`^(%s|%s)@(%s|%s)$`, dotString, quoted, domain, literal))
}()

func referenceMailbox(s string) bool {
	m := mailboxReference.FindStringSubmatch(s)
	if m == nil || len(m[1]) > maxLocalPart || len(m[2]) > maxDomain {
		return false
	}
	if inner, ok := strings.CutPrefix(m[2], "["); ok {
		inner = strings.TrimSuffix(inner, "]")
		if len(inner) > 5 && strings.EqualFold(inner[:5], "IPv6:") {
			a, err := netip.ParseAddr(inner[5:])
			return err == nil && a.Is6() && a.Zone() == ""
		}
		a, err := netip.ParseAddr(inner)
		return err == nil && a.Is4()
	}
	for _, label := range strings.Split(m[2], ".") {
		if len(label) > 63 {
			return false
		}
	}
	return true
}

// FuzzMailboxAgainstGrammar: ParseMailbox accepts exactly what the
// reference grammar accepts, and the domain it reports is the grammar's.
func FuzzMailboxAgainstGrammar(f *testing.F) {
	for _, s := range []string{"a@b.example", `"a@b,c"@d.example`, "a@[192.0.2.1]", "a@[IPv6:2001:db8::1]",
		"a@b.example,c@d.example", "@r:a@b", "a..b@c", "a@b-.c", `"a\"b"@c`, "a@[1.2.3]", "x@" + strings.Repeat("a", 64) + ".example"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		mb, ok := ParseMailbox(s)
		want := referenceMailbox(s)
		if ok != want {
			t.Fatalf("ParseMailbox(%q) ok=%v, the grammar says %v", s, ok, want)
		}
		if ok {
			if m := mailboxReference.FindStringSubmatch(s); mb.Local != m[1] || mb.Domain != m[2] {
				t.Fatalf("ParseMailbox(%q) = %q @ %q, the grammar says %q @ %q", s, mb.Local, mb.Domain, m[1], m[2])
			}
		}
	})
}
