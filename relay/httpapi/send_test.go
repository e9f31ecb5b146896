package httpapi_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/mailfleet/mailfleet/relay/queueid"
	"github.com/mailfleet/mailfleet/relay/spool"
	"github.com/mailfleet/mailfleet/relay/suppression"
)

// queueIDPattern is what relay/queueid makes, as SMTP's 250 #id#Queued shows.
var queueIDPattern = regexp.MustCompile(`^[0-9A-Za-z._-]+$`)

func TestSendJSONQueuesTheMessage(t *testing.T) {
	r := startRelay(t)
	got := r.postJSON(userMain+"#1001", map[string]any{
		"from":       "Ann Sender <ann@acme.example>",
		"to":         []string{"bob@example.com"},
		"cc":         []string{"Carol <carol@example.com>"},
		"bcc":        []string{"dave@example.com"},
		"subject":    "Grüße from the API",
		"text":       "hello\nsecond line",
		"html":       "<p>hello</p>",
		"headers":    map[string]string{"X-Campaign": "spring", "Reply-To": "help@acme.example"},
		"customArgs": map[string]string{"order": "42"},
	})
	id := got.messageID(t)
	if !queueIDPattern.MatchString(id) {
		t.Fatalf("message id %q is not a queue id", id)
	}
	if _, err := queueid.Time(id); err != nil {
		t.Fatalf("message id %q is not relay/queueid's: %v", id, err)
	}
	stored := r.stored()
	m, ok := stored[id]
	if !ok || len(stored) != 1 {
		t.Fatalf("queued %v, want the one message %s", keys(stored), id)
	}
	env := m.Env
	if env.APIUser != userMain || env.LabelID != "1001" || env.From != "ann@acme.example" || !env.TLS ||
		!slices.Equal(env.To, []string{"bob@example.com", "carol@example.com", "dave@example.com"}) ||
		env.CustomArgs["order"] != "42" || env.Via != spool.ViaHTTP {
		t.Fatalf("envelope %+v", env)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(m.Body))
	if err != nil {
		t.Fatal(err)
	}
	h := msg.Header
	subject, _ := new(mime.WordDecoder).DecodeHeader(h.Get("Subject"))
	for name, want := range map[string]string{"From": `"Ann Sender" <ann@acme.example>`, "To": "<bob@example.com>",
		"X-Campaign": "spring", "Reply-To": "help@acme.example", "Mime-Version": "1.0"} {
		if h.Get(name) != want {
			t.Errorf("%s: %q, want %q", name, h.Get(name), want)
		}
	}
	if subject != "Grüße from the API" || h.Get("Message-Id") == "" || h.Get("Date") == "" {
		t.Errorf("subject %q, message-id %q, date %q", subject, h.Get("Message-Id"), h.Get("Date"))
	}
	if bytes.Contains(bytes.ToLower(m.Body), []byte("dave@")) || h.Get("Bcc") != "" {
		t.Error("the Bcc recipient shows in the message")
	}
	if mt, _, _ := mime.ParseMediaType(h.Get("Content-Type")); mt != "multipart/alternative" {
		t.Errorf("Content-Type %q, want multipart/alternative", h.Get("Content-Type"))
	}
	if !bytes.Contains(m.Body, []byte("\r\n")) || bytes.Contains(bytes.ReplaceAll(m.Body, []byte("\r\n"), nil), []byte("\n")) {
		t.Error("the message's lines do not all end in CRLF")
	}
}

// TestCurlMultipartInlineImage posts a form with the curl binary: an
// inline image and an attachment arrive in the queue byte for byte.
func TestCurlMultipartInlineImage(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	r := startRelay(t)
	dir := t.TempDir()
	image := randomBytes(t, 50_000)
	report := randomBytes(t, 3_000)
	imagePath, reportPath := filepath.Join(dir, "logo.png"), filepath.Join(dir, "report.bin")
	writeFile(t, imagePath, image)
	writeFile(t, reportPath, report)
	cmd := exec.Command(curl, "--silent", "--show-error", "--cacert", r.caFile,
		"--user", userMain+":"+r.keys[userMain],
		"--form-string", "from=ann@acme.example",
		"--form-string", "to=bob@example.com", "--form-string", "to=carol@example.com",
		"--form-string", "subject=with a logo",
		"--form-string", `html=<p><img src="cid:logo.png"></p>`,
		"--form-string", "text=see the logo",
		"--form-string", `customArgs={"campaign":"c1"}`,
		"--form", "inline=@"+imagePath+";type=image/png",
		"--form", "attachments=@"+reportPath+";type=application/octet-stream",
		"--write-out", "\n%{http_code}",
		strings.Replace(r.url("/v1/mail/send"), "127.0.0.1", "localhost", 1),
		"--resolve", "localhost:"+port(r)+":127.0.0.1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	body, status, _ := strings.Cut(string(out), "\n")
	got := answer{status: atoi(t, status), body: []byte(body)}
	id := got.messageID(t)
	m := r.stored()[id]
	if m.Env.CustomArgs["campaign"] != "c1" || len(m.Env.To) != 2 {
		t.Fatalf("envelope %+v", m.Env)
	}
	parts := mimeParts(t, m.Body)
	if p := parts["<logo.png>"]; !bytes.Equal(p, image) {
		t.Fatalf("the inline image arrived as %d bytes, not the %d sent", len(p), len(image))
	}
	if p := parts["report.bin"]; !bytes.Equal(p, report) {
		t.Fatalf("the attachment arrived as %d bytes, not the %d sent", len(p), len(report))
	}
}

// TestSendJSONInlineImageWithGoClient does the same through JSON and
// Go's client, with base64 content.
func TestSendJSONInlineImageWithGoClient(t *testing.T) {
	r := startRelay(t)
	image := randomBytes(t, 20_000)
	got := r.postJSON(userMain, map[string]any{
		"from": "ann@acme.example", "to": []string{"bob@example.com"}, "subject": "logo",
		"html": `<img src="cid:logo@acme">`,
		"attachments": []map[string]string{{"filename": "logo.png", "contentType": "image/png",
			"content": base64.StdEncoding.EncodeToString(image), "contentId": "logo@acme"}},
	})
	id := got.messageID(t)
	body := r.stored()[id].Body
	if p := mimeParts(t, body)["<logo@acme>"]; !bytes.Equal(p, image) {
		t.Fatalf("the inline image arrived as %d bytes, not the %d sent", len(p), len(image))
	}
	msg, _ := mail.ReadMessage(bytes.NewReader(body))
	if mt, _, _ := mime.ParseMediaType(msg.Header.Get("Content-Type")); mt != "multipart/related" {
		t.Fatalf("Content-Type %q, want multipart/related", msg.Header.Get("Content-Type"))
	}
}

// mimeParts walks a message's MIME tree and returns each leaf's decoded
// body by Content-ID, else by file name.
func mimeParts(t *testing.T, raw []byte) map[string][]byte {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	walkPart(t, msg.Header.Get("Content-Type"), msg.Header.Get("Content-Transfer-Encoding"), "", "", msg.Body, out)
	return out
}

func walkPart(t *testing.T, contentType, encoding, cid, disposition string, body io.Reader, out map[string][]byte) {
	mt, params, _ := mime.ParseMediaType(contentType)
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			walkPart(t, p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"),
				p.Header.Get("Content-Id"), p.Header.Get("Content-Disposition"), p, out)
		}
	}
	data, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	if strings.EqualFold(encoding, "base64") {
		if data, err = base64.StdEncoding.DecodeString(string(bytes.ReplaceAll(data, []byte("\r\n"), nil))); err != nil {
			t.Fatal(err)
		}
	}
	key := cid
	if key == "" {
		_, dp, _ := mime.ParseMediaType(disposition)
		key = dp["filename"]
	}
	out[key] = data
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, b []byte) {
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func port(r *relay) string {
	_, p, _ := strings.Cut(r.api.Addr().String(), ":")
	return p
}

func atoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		t.Fatalf("not a status: %q", s)
	}
	return n
}

// suppressedSet suppresses the listed account/recipient pairs.
type suppressedSet map[string]bool

func (s suppressedSet) Suppressed(_ context.Context, apiUser, recipient string) (suppression.Entry, bool) {
	return suppression.Entry{Recipient: recipient}, s[apiUser+"/"+recipient]
}

// TestSuppressedRecipient: a message naming a recipient on the account's
// suppression list is refused whole, saying which, and queues nothing.
func TestSuppressedRecipient(t *testing.T) {
	r := startRelay(t, func(c *relayConfig) { c.suppressions = suppressedSet{userCorp + "/gone@example.com": true} })
	a := r.postJSON(userCorp, map[string]any{"from": "ann@corp.example", "to": []string{"bob@example.com", "gone@example.com"}, "text": "x"})
	r.expectError(a, 422, "recipient_suppressed")
	if !strings.Contains(string(a.body), "gone@example.com") {
		t.Fatalf("the answer does not name the recipient: %s", a.body)
	}
	if len(r.stored()) != 0 {
		t.Fatal("a message was queued")
	}
}

// TestSMTPAPIHeaderRefusedByTheAPI: the API has fields of its own for what
// X-SMTPAPI asks; one in its headers is refused, not applied (docs/api.md).
func TestSMTPAPIHeaderRefusedByTheAPI(t *testing.T) {
	r := startRelay(t)
	r.expectError(r.postJSON(userCorp, map[string]any{"from": "ann@corp.example", "to": []string{"bob@example.com"}, "text": "x",
		"headers": map[string]string{"X-SMTPAPI": `{"to": ["victim@example.com"]}`}}), 422, "invalid_field")
}
