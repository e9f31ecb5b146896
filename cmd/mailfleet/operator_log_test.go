package main

import (
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
)

// TestLazyValues: values added to a logger reach the sink only with a line
// that is written, and loggers made from one logger keep their own values.
func TestLazyValues(t *testing.T) {
	var lines []string
	rec := &valuesCountingSink{LogSink: funcr.New(func(prefix, args string) { lines = append(lines, args) }, funcr.Options{}).GetSink()}
	l := lazyValues(logr.New(rec))

	base := l.WithValues("controller", "smtpaccount")
	a := base.WithValues("name", "a")
	b := base.WithValues("name", "b")
	base.V(1).Info("not written")
	if rec.withValues != 0 {
		t.Fatalf("%d WithValues reached the sink before any line was written", rec.withValues)
	}
	a.Info("first")
	b.WithName("publisher").Error(nil, "second")
	if len(lines) != 2 {
		t.Fatalf("lines %q, want 2", lines)
	}
	for i, want := range []string{`"controller"="smtpaccount" "name"="a"`, `"controller"="smtpaccount" "name"="b"`} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d %q does not carry %s", i, lines[i], want)
		}
	}
}

// valuesCountingSink counts the WithValues calls that reach it.
type valuesCountingSink struct {
	logr.LogSink
	withValues int
}

func (s *valuesCountingSink) WithValues(kv ...any) logr.LogSink {
	s.withValues++
	return s.LogSink.WithValues(kv...)
}
