package webhook

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func itoa(n int) string { return strconv.Itoa(n) }

// TestSignature: a signature verifies with its secret and body, within
// the replay window only.
func TestSignature(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	body := []byte(`[{"id":"ev_1"}]`)
	h := Sign(secret, now, body)
	if !strings.HasPrefix(h, "t=1700000000,v1=") || len(h) != len("t=1700000000,v1=")+64 {
		t.Fatalf("header %q", h)
	}
	if err := Verify(secret, h, body, now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"other secret": Verify("whsec-other-0123456789ab", h, body, now),
		"other body":   Verify(secret, h, []byte(`[]`), now),
		"replayed":     Verify(secret, h, body, now.Add(ReplayWindow+time.Second)),
		"no timestamp": Verify(secret, "v1=00", body, now),
	} {
		if err == nil {
			t.Errorf("%s: verified", name)
		}
	}
}

// TestSignatureInPython: the check docs/events.md gives receivers in
// Python accepts what the relay signs.
func TestSignatureInPython(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	body := `[{"id":"ev_1","type":"delivered"}]`
	now := time.Now()
	script := `
import hmac, hashlib, sys, time
secret, header, body = sys.argv[1].encode(), sys.argv[2], sys.argv[3].encode()
parts = dict(p.split("=", 1) for p in header.split(","))
t = parts["t"]
if abs(time.time() - int(t)) > 300:
    sys.exit("outside the replay window")
want = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
if not hmac.compare_digest(want, parts["v1"]):
    sys.exit("bad signature")
print("ok")
`
	out, err := exec.Command(python, "-c", script, secret, Sign(secret, now, []byte(body)), body).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("python: %v: %s", err, out)
	}
	out, _ = exec.Command(python, "-c", script, secret, Sign(secret, now, []byte(body+" ")), body).CombinedOutput()
	if strings.TrimSpace(string(out)) == "ok" {
		t.Fatal("python verified a signature of another body")
	}
}
