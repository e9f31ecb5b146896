package queue

import (
	"os"
	"path/filepath"
	"testing"
)

// TestFinishedSurvivesARestart: what one process records as finished the
// next one knows, a torn last entry is ignored, and pruning keeps only what
// the stream may still hand out.
func TestFinishedSurvivesARestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), finishedFile)
	f, err := openFinished(path)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 70_000; seq++ {
		if err := f.record(seq); err != nil {
			t.Fatal(err)
		}
	}
	if f.finishedBefore(5) {
		t.Fatal("this process's own finishes count as an earlier process's")
	}
	if err := f.prune(69_990); err != nil {
		t.Fatal(err)
	}
	if err := f.record(70_001); err != nil {
		t.Fatal(err)
	}
	f.close()
	// A kill in the middle of an entry's write.
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.Write([]byte{0, 0, 1})
	fh.Close()

	again, err := openFinished(path)
	if err != nil {
		t.Fatal(err)
	}
	defer again.close()
	for _, c := range []struct {
		seq  uint64
		want bool
	}{{69_990, false}, {69_991, true}, {70_000, true}, {70_001, true}, {70_002, false}} {
		if got := again.finishedBefore(c.seq); got != c.want {
			t.Errorf("finished before %d: %v, want %v", c.seq, got, c.want)
		}
	}
	if again.count != 11 {
		t.Fatalf("%d entries after the restart, want 11", again.count)
	}
}
