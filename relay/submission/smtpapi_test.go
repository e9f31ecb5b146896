package submission

import (
	"errors"
	"strings"
	"testing"

	"github.com/mailfleet/mailfleet/relay/budget"
)

// TestSMTPAPICopiesAllOrNone: the copies of a message with "sub" are all
// written, then the budget taken, then all committed; a failure before the
// commits leaves none queued and the client told why. A commit failing
// halfway leaves the copies committed before it (the spool cannot take a
// commit back) and aborts the rest: 451, and the client's retry sends the
// first ones twice, never none.
func TestSMTPAPICopiesAllOrNone(t *testing.T) {
	api := b64(`{"to": ["a@example.com", "b@example.com", "c@example.com"], "sub": {"%name%": ["A", "B", "C"]}}`)
	down := errors.New("queue down")
	for _, tt := range []struct {
		name          string
		setup         func(*policy)
		want          string
		wantCommitted int
	}{
		{"a write fails", func(p *policy) { p.spool.writeErr = down }, "451 4.3.0 Queue unavailable, try again later", 0},
		{"over budget", func(p *policy) { p.budget = budget.OverLimit }, "536 5.7.1 Frequency limited", 0},
		{"the budget unavailable", func(p *policy) { p.budget = budget.Unavailable }, "451 4.7.1 Frequency limit unavailable, try again later", 0},
		{"the first commit fails", func(p *policy) { p.spool.commitErr = down }, "451 4.3.0 Queue unavailable, try again later", 0},
		{"the second commit fails", func(p *policy) { p.spool.commitErr, p.spool.commitErrAfter = down, 1 }, "451 4.3.0 Queue unavailable, try again later", 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newPolicy(t, 0)
			tt.setup(p)
			got := reply(t, mustErr(sendOne(t, p.session(t, "192.0.2.1", "labelled"), strings.NewReader(withSMTPAPI(api, "Dear %name%\r\n")))))
			if got != tt.want {
				t.Fatalf("reply %q, want %q", got, tt.want)
			}
			committed := 0
			for _, m := range p.spool.begun {
				if m.committed {
					committed++
				} else if !m.aborted {
					t.Fatalf("copy %s neither committed nor aborted", m.env.ID)
				}
			}
			// A copy committed is queued whatever the reply, and its
			// events say so.
			if committed != tt.wantCommitted || len(p.events.reported) != committed {
				t.Fatalf("%d copies committed, %d queued events; want %d of each", committed, len(p.events.reported), tt.wantCommitted)
			}
		})
	}
}

// TestSMTPAPICopiesEvents: each copy is reported queued once, after its
// commit, under its own id, with the header's customArgs.
func TestSMTPAPICopiesEvents(t *testing.T) {
	p := newPolicy(t, 0)
	api := b64(`{"to": ["a@example.com", "b@example.com"], "sub": {"%name%": ["A", "B"]}, "customArgs": {"campaign": "7"}}`)
	id, err := sendOne(t, p.session(t, "192.0.2.1", "labelled"), strings.NewReader(withSMTPAPI(api, "Dear %name%\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.events.reported) != 2 || !p.events.reported[0] || !p.events.reported[1] {
		t.Fatalf("queued events %v, want two, each after its commit", p.events.reported)
	}
	for i, m := range p.spool.begun {
		if m.env.ID != id+"-"+string(rune('0'+i)) || m.env.CustomArgs["campaign"] != "7" {
			t.Fatalf("copy %d: %+v", i, m.env)
		}
	}
}

// TestSubstituterLongestTagFirst: a tag inside a longer one is not
// replaced inside it, whatever order the JSON object gave them in.
func TestSubstituterLongestTagFirst(t *testing.T) {
	sub := map[string][]string{"%n%": {"short"}, "%n%s%": {"long"}, "%m%": {"%n%"}}
	got := newSubstituter(sub).replacer(0).Replace("%n%s% %n% %m%")
	// A value is not substituted again: "%m%" gives "%n%" as it is.
	if got != "long short %n%" {
		t.Fatalf("got %q", got)
	}
}
