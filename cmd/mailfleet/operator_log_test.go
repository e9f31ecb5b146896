package main

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	uberzap "go.uber.org/zap"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
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

// TestLazyValuesCaller: a line reports the line that logged it, also
// through a helper that asks for one more frame (WithCallDepth), as
// controller-runtime's delegating logger does; with the operator's zap.
func TestLazyValuesCaller(t *testing.T) {
	var out bytes.Buffer
	l := lazyValues(zap.New(zap.WriteTo(&out), zap.RawZapOpts(uberzap.AddCaller()))).WithValues("k", "v")
	_, _, line, _ := runtime.Caller(0)
	l.Info("direct")
	logVia := func(l logr.Logger) { l.WithCallDepth(1).Info("through a helper") }
	logVia(l)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	for i, want := range []int{line + 1, line + 3} {
		if i >= len(lines) || !strings.Contains(lines[i], fmt.Sprintf(`operator_log_test.go:%d"`, want)) {
			t.Errorf("line %d: %q, want the caller at line %d", i, lines, want)
		}
	}
}
