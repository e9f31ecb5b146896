package webhook

import (
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestPostErrorsLeaveTheURLsSecretsOut: a receiver that authenticates with
// a token in its URL's path or query does not find it in the relay's log,
// where net/http's errors would have quoted the whole URL.
func TestPostErrorsLeaveTheURLsSecretsOut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // connections to it are refused
	u, _ := url.Parse("http://" + addr + "/hooks/path-token-1?token=query-token-2")
	_, err = http.Post(u.String(), "application/json", strings.NewReader("[]"))
	if err == nil {
		t.Fatal("a POST to a closed port succeeded")
	}
	msg := postError(u, err).Error()
	if strings.Contains(msg, "token") || !strings.Contains(msg, addr) || !strings.Contains(msg, "refused") {
		t.Fatalf("error %q: want the host and the cause, without the path or query", msg)
	}
}
