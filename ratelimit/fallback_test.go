package ratelimit

import (
	"testing"
	"time"
)

func TestFallbackAdmitsTheShareOfEachPod(t *testing.T) {
	tests := []struct {
		name     string
		replicas int
		limit    int64
		hits     []int64
		want     []bool
	}{
		{"one pod takes the whole limit", 1, 3, []int64{1, 1, 1, 1}, []bool{true, true, true, false}},
		{"three pods: a third each", 3, 10, []int64{1, 1, 1, 1}, []bool{true, true, true, false}},
		{"a refused call is not counted", 2, 10, []int64{4, 2, 1, 1}, []bool{true, false, true, false}},
		{"a small account still gets one per pod", 5, 2, []int64{1, 1}, []bool{true, false}},
		{"a zero limit admits nothing", 1, 0, []int64{1}, []bool{false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFallback(time.Minute, tt.replicas)
			clock := time.Date(2026, 11, 28, 14, 0, 30, 0, time.UTC)
			f.now = func() time.Time { return clock }
			for i, h := range tt.hits {
				if got := f.take("acme", h, tt.limit); got.Allowed != tt.want[i] {
					t.Fatalf("call %d (+%d): allowed=%v, want %v", i, h, got.Allowed, tt.want[i])
				}
			}
		})
	}
}

func TestFallbackStartsAgainEachWindow(t *testing.T) {
	f := newFallback(time.Minute, 1)
	clock := time.Date(2026, 11, 28, 14, 0, 59, 500e6, time.UTC)
	f.now = func() time.Time { return clock }
	if r := f.take("acme", 2, 2); !r.Allowed || r.ResetIn != 500*time.Millisecond {
		t.Fatalf("first window: %+v", r)
	}
	if r := f.take("acme", 1, 2); r.Allowed {
		t.Fatal("first window: admitted over the limit")
	}
	clock = clock.Add(time.Second)
	if r := f.take("acme", 2, 2); !r.Allowed || r.Count != 2 || r.ResetIn != 59500*time.Millisecond {
		t.Fatalf("next window: %+v", r)
	}
}
