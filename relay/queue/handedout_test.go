package queue

import (
	"os"
	"path/filepath"
	"testing"
)

// TestHandedOutRecord: the highest sequence handed out survives the
// process (here: the file is reopened without close, as after SIGKILL), only
// rises, and is forgotten when the stream it came from is gone.
func TestHandedOutRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), handedOutFile)
	h, err := openHandedOut(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{3, 9, 7} {
		if err := h.record(seq); err != nil {
			t.Fatal(err)
		}
	}
	if h.handedBefore(1) {
		t.Fatal("a fresh record says sequence 1 was handed out before")
	}
	again, err := openHandedOut(path, 20)
	if err != nil {
		t.Fatal(err)
	}
	defer again.close()
	if !again.handedBefore(9) || !again.handedBefore(4) || again.handedBefore(10) {
		t.Fatalf("after a restart: before = %d, want 9", again.before)
	}
	h.close()

	// A stream that was removed and started again: its sequences begin
	// anew, so an old number would count new messages.
	fresh, err := openHandedOut(path, 5)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.close()
	if fresh.handedBefore(1) {
		t.Fatal("a number above the stream's last sequence was kept")
	}
	if b, _ := os.ReadFile(path); string(b) != "00000000000000000000\n" {
		t.Fatalf("file after forgetting: %q", b)
	}
}

// TestHandedOutDamagedFile: a file that cannot be read as a number only
// costs counts; the queue still opens.
func TestHandedOutDamagedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), handedOutFile)
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	h, err := openHandedOut(path, 100)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	if h.handedBefore(1) {
		t.Fatal("a damaged file counted as a hand-out")
	}
	var nilRecord *handedOut // an external queue keeps none
	if nilRecord.handedBefore(1) || nilRecord.record(5) != nil || nilRecord.close() != nil {
		t.Fatal("a nil record is not inert")
	}
}
