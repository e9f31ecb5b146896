package spool

import (
	"context"
	"errors"
	"os"
	"testing"
)

// Discard acknowledges what it drops (benchmarks only); Uncommittable,
// which stands in for a message the spool could not begin, never does.
func TestDiscardWriters(t *testing.T) {
	ctx := context.Background()
	w, err := Discard{}.Begin(ctx, Envelope{ID: "1"})
	if err != nil {
		t.Fatal(err)
	}
	for name, tt := range map[string]struct {
		w    Writer
		want error
	}{"Discard": {w, nil}, "Uncommittable": {Uncommittable(), os.ErrInvalid}} {
		if n, err := tt.w.Write([]byte("body\r\n")); n != 6 || err != nil {
			t.Fatalf("%s: Write = %d, %v; want the body taken", name, n, err)
		}
		if err := tt.w.Commit(ctx); !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
			t.Fatalf("%s: Commit = %v, want %v", name, err, tt.want)
		}
		if err := tt.w.Abort(); err != nil {
			t.Fatalf("%s: Abort = %v", name, err)
		}
	}
}
