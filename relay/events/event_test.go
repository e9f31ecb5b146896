package events

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/relay/spool"
)

// TestEventsCarryCustomArgs: the customArgs a message was sent with (the
// HTTP API's) are in each of its events, and an event of a message with
// none still has the field, as an empty object.
func TestEventsCarryCustomArgs(t *testing.T) {
	at := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	env := spool.Envelope{ID: "q1", APIUser: "acme", To: []string{"a@example.com", "b@example.com"},
		CustomArgs: map[string]string{"order": "42"}}
	for _, ev := range QueuedEvents(env, at) {
		if ev.CustomArgs["order"] != "42" {
			t.Errorf("event %s: customArgs %v", ev.ID, ev.CustomArgs)
		}
	}
	env.CustomArgs = nil
	b, err := json.Marshal(QueuedEvents(env, at)[0])
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(b, &doc); err != nil || string(doc["customArgs"]) != "{}" {
		t.Errorf("an event without customArgs: %s", b)
	}
}

// TestRefusedSuppressedOncePerMinute: a client trying a suppressed address
// again and again (each refusal costs it no budget) makes one event id per
// account, recipient and minute, so the stream keeps one, not a flood that
// would push other accounts' events out of it.
func TestRefusedSuppressedOncePerMinute(t *testing.T) {
	at := time.Date(2026, 12, 5, 1, 20, 5, 0, time.UTC)
	a := RefusedSuppressed("acme", "", "gone@example.com", at)
	if b := RefusedSuppressed("acme", "7", "gone@example.com", at.Add(50*time.Second)); b.ID != a.ID {
		t.Error("two refusals in one minute have two ids")
	}
	for _, other := range []Event{
		RefusedSuppressed("acme", "", "gone@example.com", at.Add(time.Minute)),
		RefusedSuppressed("other", "", "gone@example.com", at),
		RefusedSuppressed("acme", "", "else@example.com", at),
	} {
		if other.ID == a.ID {
			t.Errorf("%+v shares the id of %+v", other, a)
		}
	}
}
