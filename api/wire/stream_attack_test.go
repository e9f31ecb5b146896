package wire

import (
	"strings"
	"testing"
)

// Attack (issue 12.12): team-a/mx and team/a-mx rendered the same stream,
// MAILFLEET_TEAM_A_MX, so each relay delivered, and acknowledged, the
// other's mail. The default is now injective.
func TestDefaultStreamInjective(t *testing.T) {
	pairs := [][2][2]string{
		{{"team-a", "mx"}, {"team", "a-mx"}},
		{{"team", "a.mx"}, {"team", "a-mx"}},
		{{"a", "b.c"}, {"a-b", "c"}},
	}
	for _, p := range pairs {
		a, b := StreamFor(p[0][0], p[0][1]), StreamFor(p[1][0], p[1][1])
		if a == b {
			t.Errorf("%s/%s and %s/%s share stream %s", p[0][0], p[0][1], p[1][0], p[1][1], a)
		}
	}
	long := strings.Repeat("n", 200)
	if s := StreamFor("mail", long); len(s) > MaxStreamName || s == StreamFor("mail", long+"x") {
		t.Errorf("long names: %q", s)
	}
	if s := StreamFor("mail", "mx"); s != "MAILFLEET_MAIL_MX" {
		t.Errorf("simple name became %q", s)
	}
}
