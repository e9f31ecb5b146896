package httpapi

import (
	"runtime"
	"strings"
	"testing"
)

// TestLongListsRefusedBeforeDecoding: a 16 MB body of four million
// one-letter addresses is refused having allocated a small part of its
// size. Before, every address was decoded (twice: once by the key check,
// once into the request) and only then counted, hundreds of megabytes
// for one request.
func TestLongListsRefusedBeforeDecoding(t *testing.T) {
	body := []byte(`{"from":"a@b.example","to":[` + strings.Repeat(`"a",`, 4_000_000) + `"a"]}`)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, e := decodeJSON(body)
	runtime.ReadMemStats(&after)
	if e == nil || e.code != codeTooManyRecipients {
		t.Fatalf("decodeJSON: %v", e)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > uint64(len(body))/4 {
		t.Fatalf("%d bytes allocated to refuse a body of %d", alloc, len(body))
	}
}
