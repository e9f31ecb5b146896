package delivery

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestBackoffDefaultIsPostfix(t *testing.T) {
	b := DefaultBackoff()
	if err := b.Validate(); err != nil {
		t.Fatal(err)
	}
	var got []time.Duration
	for n := 1; n <= 7; n++ {
		got = append(got, b.Delay(n))
	}
	want := []time.Duration{300 * time.Second, 600 * time.Second, 1200 * time.Second, 2400 * time.Second,
		4000 * time.Second, 4000 * time.Second, 4000 * time.Second}
	if !slices.Equal(got, want) {
		t.Fatalf("delays %v, want %v", got, want)
	}
	if b.Lifetime != 5*24*time.Hour {
		t.Fatalf("lifetime %v", b.Lifetime)
	}
}

func TestBackoffSchedule(t *testing.T) {
	b := Backoff{Schedule: []time.Duration{time.Second, 5 * time.Second}, Lifetime: time.Hour}
	if err := b.Validate(); err != nil {
		t.Fatal(err)
	}
	for n, want := range map[int]time.Duration{0: time.Second, 1: time.Second, 2: 5 * time.Second, 9: 5 * time.Second} {
		if got := b.Delay(n); got != want {
			t.Fatalf("Delay(%d) = %v, want %v", n, got, want)
		}
	}
}

func TestBackoffNextAndExpiry(t *testing.T) {
	b := DefaultBackoff()
	recv := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	if d, exp := b.Next(1, recv, recv.Add(time.Minute)); exp || d != 300*time.Second {
		t.Fatalf("first retry %v %v", d, exp)
	}
	// Near the end of the lifetime the last retry comes exactly at it.
	if d, exp := b.Next(30, recv, recv.Add(b.Lifetime-10*time.Minute)); exp || d != 10*time.Minute {
		t.Fatalf("last retry %v %v", d, exp)
	}
	if _, exp := b.Next(31, recv, recv.Add(b.Lifetime)); !exp {
		t.Fatal("not expired at the lifetime")
	}
	r := Expire(Result{Recipient: "a@x", Outcome: Deferred, Code: 451, Enhanced: "4.3.0", Text: "try later"}, b.Lifetime)
	if r.Outcome != Failed || r.Enhanced != "5.4.7" || r.Code != 451 || !strings.Contains(r.Text, "try later") {
		t.Fatalf("%+v", r)
	}
	if r := Expire(Result{Outcome: Delivered}, b.Lifetime); r.Outcome != Delivered {
		t.Fatal("Expire changed a delivered result")
	}
}

func TestBackoffValidate(t *testing.T) {
	for name, b := range map[string]Backoff{
		"min above max":  {Min: time.Hour, Max: time.Minute, Lifetime: time.Hour},
		"zero lifetime":  {Min: time.Minute, Max: time.Hour},
		"zero in list":   {Schedule: []time.Duration{0}, Lifetime: time.Hour},
		"nothing at all": {},
	} {
		if b.Validate() == nil {
			t.Errorf("%s: valid", name)
		}
	}
}

func TestClassify(t *testing.T) {
	for code, want := range map[int]Outcome{250: Delivered, 251: Delivered, 421: Deferred, 450: Deferred, 0: Deferred, 550: Failed, 554: Failed} {
		if got := Classify(code); got != want {
			t.Errorf("Classify(%d) = %v, want %v", code, got, want)
		}
	}
}
