package delivery

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestDomainLimiter(t *testing.T) {
	l := NewDomainLimiter(2)
	ctx := ctxFor(t)
	var releases []func()
	for range 2 {
		release, err := l.Acquire(ctx, "a.example")
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, release)
	}
	// Another domain has slots of its own.
	releaseB, err := l.Acquire(ctx, "b.example")
	if err != nil {
		t.Fatal(err)
	}
	releaseB()
	// A third for a.example waits until its context ends...
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := l.Acquire(short, "a.example"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third slot: %v, want the context's deadline", err)
	}
	// ...or until a slot is given back.
	got := make(chan error, 1)
	go func() {
		release, err := l.Acquire(ctx, "a.example")
		if err == nil {
			release()
		}
		got <- err
	}()
	releases[0]()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	releases[1]()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.slots) != 0 {
		t.Fatalf("%d domains kept after use", len(l.slots))
	}
}
