package wire

import (
	"regexp"
	"strings"
	"testing"
)

// TestUsernameRoundTrip: what the operator writes into a credentials Secret
// is what the relay splits at login, for every id the pattern allows.
func TestUsernameRoundTrip(t *testing.T) {
	for _, tt := range []struct{ apiUser, labelID, want string }{
		{"shop", "", "shop"},
		{"shop", "1001", "shop#1001"},
		{"a.b-c_d", "x.Y-9", "a.b-c_d#x.Y-9"},
	} {
		got := Username(tt.apiUser, tt.labelID)
		if got != tt.want {
			t.Errorf("Username(%q, %q) = %q, want %q", tt.apiUser, tt.labelID, got, tt.want)
		}
		u, l, has := SplitUsername(got)
		if u != tt.apiUser || l != tt.labelID || has != (tt.labelID != "") {
			t.Errorf("SplitUsername(%q) = %q, %q, %v", got, u, l, has)
		}
	}
	// "shop#" names a label that is empty, not the account itself.
	if _, l, has := SplitUsername("shop#"); !has || l != "" {
		t.Errorf(`SplitUsername("shop#") = label %q, %v; want "", true`, l, has)
	}
	if regexp.MustCompile(IDPattern).MatchString("a" + LabelSeparator + "b") {
		t.Error("IDPattern allows the separator: a username could split two ways")
	}
}

// TestShardVersion: a relay refuses a shard newer than it reads rather than
// misreading it, and reads one that does not say as version 1.
func TestShardVersion(t *testing.T) {
	acc := `{"apiUser":"shop","keyDigests":["` + Digest("k") + `"]}`
	if _, err := ParseShard([]byte(`{"accounts":[` + acc + `]}`)); err != nil {
		t.Fatalf("a shard without a version: %v", err)
	}
	if _, err := ParseShard([]byte(`{"version":1,"accounts":[` + acc + `]}`)); err != nil {
		t.Fatalf("a version 1 shard: %v", err)
	}
	_, err := ParseShard([]byte(`{"version":2,"accounts":[` + acc + `]}`))
	if err == nil || !strings.Contains(err.Error(), "upgrade the relay") {
		t.Fatalf("a version 2 shard: %v, want refused", err)
	}
	data, err := MarshalShard([]Account{{APIUser: "shop", KeyDigests: []string{Digest("k")}}})
	if err != nil || strings.Contains(string(data), "version") {
		t.Fatalf("MarshalShard wrote %s, %v: relays of before the version field would refuse it", data, err)
	}
}

// TestSubjectsOf: the queue's subjects are the stream's name in lower case,
// and its bodies have a stream of their own.
func TestSubjectsOf(t *testing.T) {
	s := SubjectsOf("MAILFLEET_MAIL_MX")
	want := Subjects{In: "mailfleet_mail_mx.in", Queue: "mailfleet_mail_mx.q", Sched: "mailfleet_mail_mx.sched",
		Split: "mailfleet_mail_mx.split", Body: "mailfleet_mail_mx.body", Events: "mailfleet_mail_mx.events"}
	if s != want {
		t.Errorf("SubjectsOf = %+v, want %+v", s, want)
	}
	if BodyStream("MAILFLEET") != "MAILFLEET_BODY" {
		t.Errorf("BodyStream = %q", BodyStream("MAILFLEET"))
	}
	if EventsStream("MAILFLEET") != "MAILFLEET_EVENTS" || WebhooksBucket("MAILFLEET") != "MAILFLEET_WEBHOOKS" {
		t.Errorf("EventsStream = %q, WebhooksBucket = %q", EventsStream("MAILFLEET"), WebhooksBucket("MAILFLEET"))
	}
}
