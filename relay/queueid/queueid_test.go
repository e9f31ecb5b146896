package queueid

import (
	"regexp"
	"sort"
	"sync"
	"testing"
	"time"
)

func TestIDsAreUniqueAndSortByTime(t *testing.T) {
	g, err := New("relay-7f9c/0")
	if err != nil {
		t.Fatal(err)
	}
	base := time.UnixMilli(1764337884123)
	step := 0
	var mu sync.Mutex
	g.now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		step++
		return base.Add(time.Duration(step/10) * time.Millisecond)
	}
	var ids []string
	for range 1000 {
		ids = append(ids, g.Next())
	}
	if !sort.StringsAreSorted(ids) {
		t.Fatal("ids made in order do not sort in order")
	}
	seen := map[string]bool{}
	shape := regexp.MustCompile(`^\d{13}_\d{8}_[0-9a-f]{6}\.relay-7f9c-0$`)
	for _, id := range ids {
		if seen[id] {
			t.Fatalf("duplicate id %s", id)
		}
		seen[id] = true
		if !shape.MatchString(id) {
			t.Fatalf("id %q has the wrong shape", id)
		}
	}
	got, err := Time(ids[0])
	if err != nil || !got.Equal(base) {
		t.Fatalf("Time(%s) = %v, %v; want %v", ids[0], got, err, base)
	}
}

func TestGeneratorsOnTwoNodesNeverCollide(t *testing.T) {
	a, _ := New("node")
	b, _ := New("node") // same pod name after a restart: the process tag differs
	seen := map[string]bool{}
	for range 10000 {
		for _, id := range []string{a.Next(), b.Next()} {
			if seen[id] {
				t.Fatalf("duplicate id %s", id)
			}
			seen[id] = true
		}
	}
}

func BenchmarkNext(b *testing.B) {
	g, _ := New("bench")
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = g.Next()
		}
	})
}
