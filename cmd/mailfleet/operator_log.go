package main

import (
	"slices"

	"github.com/go-logr/logr"
)

// lazyValues returns l with WithValues deferred until a line is logged.
//
// controller-runtime gives every reconcile a logger carrying its
// controller, request and reconcile ID, and zap encodes those values the
// moment they are added: at 10,000 accounts and 20,000 labels some 65,000
// reconciles allocated 6 KiB each for it, a tenth of the operator's
// allocations, although nearly all of them log nothing. Here the values
// wait in a slice and reach zap only with a line that is written.
func lazyValues(l logr.Logger) logr.Logger {
	sink := l.GetSink()
	if cd, ok := sink.(logr.CallDepthLogSink); ok {
		sink = cd.WithCallDepth(1) // lazySink's own frame
	}
	return logr.New(&lazySink{sink: sink})
}

// lazySink holds values for sink that it adds only when a line is logged.
type lazySink struct {
	sink   logr.LogSink
	values []any
}

// Init does nothing: sink was initialised when its logger was made.
func (*lazySink) Init(logr.RuntimeInfo) {}

func (s *lazySink) Enabled(level int) bool { return s.sink.Enabled(level) }

func (s *lazySink) Info(level int, msg string, kv ...any) { s.resolved().Info(level, msg, kv...) }

func (s *lazySink) Error(err error, msg string, kv ...any) { s.resolved().Error(err, msg, kv...) }

func (s *lazySink) WithValues(kv ...any) logr.LogSink {
	// Clipped, so that two loggers made from s never share an appended
	// array.
	return &lazySink{sink: s.sink, values: append(slices.Clip(s.values), kv...)}
}

func (s *lazySink) WithName(name string) logr.LogSink {
	return &lazySink{sink: s.sink.WithName(name), values: s.values}
}

// WithCallDepth passes a depth on to sink, so that loggers that reach this
// one through controller-runtime's delegating sink (which adds its own
// frame) report their caller's line.
func (s *lazySink) WithCallDepth(depth int) logr.LogSink {
	if cd, ok := s.sink.(logr.CallDepthLogSink); ok {
		return &lazySink{sink: cd.WithCallDepth(depth), values: s.values}
	}
	return s
}

func (s *lazySink) resolved() logr.LogSink {
	if len(s.values) == 0 {
		return s.sink
	}
	return s.sink.WithValues(s.values...)
}
