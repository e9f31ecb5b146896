package spool

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	crashChildEnv = "SPOOL_CRASH_CHILD"
	crashDirEnv   = "SPOOL_CRASH_DIR"
	ackPrefix     = "ACK "
)

// crashBody derives a message body from its id, so the parent can check a
// body it never saw. Sizes vary; about one in sixteen is large enough to be
// spilled to tmp/ and copied into the segment.
func crashBody(id string) []byte {
	h := fnv.New64a()
	h.Write([]byte(id))
	seed := h.Sum64()
	if seed%16 == 0 {
		return randomBytes(spillAt+int(seed%500_000), seed)
	}
	return randomBytes(100+int(seed%150_000), seed)
}

// TestCommittedSurvivesKill kills a process that is committing messages and
// checks that every message it acknowledged (printed after Commit returned)
// is in the reopened spool, intact. SIGKILL only loses the process, not the
// page cache, so this proves the ordering (nothing acknowledged before it is
// in a segment, and recovery keeps every whole record and only those) but
// not the fdatasyncs: power loss cannot be simulated here.
func TestCommittedSurvivesKill(t *testing.T) {
	if os.Getenv(crashChildEnv) == "1" {
		crashChild(os.Getenv(crashDirEnv))
		return
	}
	const killAfter = 200
	path := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCommittedSurvivesKill$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"=1", crashDirEnv+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })

	var acked []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		id, ok := strings.CutPrefix(sc.Text(), ackPrefix)
		if !ok {
			continue
		}
		acked = append(acked, id)
		if len(acked) == killAfter {
			cmd.Process.Kill() // SIGKILL; keep reading what it printed before dying
		}
	}
	cmd.Wait()
	if len(acked) < killAfter {
		t.Fatalf("child acknowledged only %d messages before exiting", len(acked))
	}

	l := openTestLog(t, path)
	ids := pending(t, l)
	landed := make(map[string]bool, len(ids))
	for _, id := range ids {
		landed[id] = true
		// Unacknowledged messages may land too, but never truncated.
		if _, body := readMessage(t, l, id); !bytes.Equal(body, crashBody(id)) {
			t.Errorf("%s: body damaged (%d bytes)", id, len(body))
		}
	}
	for _, id := range acked {
		if !landed[id] {
			t.Errorf("acknowledged message %s lost", id)
		}
	}
	if names := dirNames(t, filepath.Join(path, tmpDir)); len(names) > 0 {
		t.Errorf("tmp/ = %q after reopening", names)
	}
	t.Logf("%d acknowledged, %d in spool", len(acked), len(ids))
}

// crashChild commits messages from several goroutines until it is killed,
// printing each id only after its Commit returned nil.
func crashChild(path string) {
	l, err := OpenLog(path, slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	// Stop on its own if the parent never kills it.
	deadline := time.Now().Add(30 * time.Second)
	var out sync.Mutex
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := 0; time.Now().Before(deadline); i++ {
				id := fmt.Sprintf("g%d-%06d", g, i)
				if err := commitChild(l, id); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
				out.Lock()
				fmt.Fprintln(os.Stdout, ackPrefix+id)
				out.Unlock()
			}
		})
	}
	wg.Wait()
	os.Exit(3)
}

func commitChild(l *Log, id string) error {
	ctx := context.Background()
	w, err := l.Begin(ctx, envelope(id))
	if err != nil {
		return err
	}
	if _, err := w.Write(crashBody(id)); err != nil {
		return err
	}
	return w.Commit(ctx)
}
