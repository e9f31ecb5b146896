// Package loopback gives tests addresses on 127.0.0.1, the only interface
// the project's tests bind.
package loopback

import (
	"net"
	"testing"
)

// FreeAddr finds a free port on 127.0.0.1 for a child process or server
// that must be told its address up front. The port is free when FreeAddr
// returns; another process could take it before it is used, which on a
// test machine's ephemeral range is rare enough not to matter.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
