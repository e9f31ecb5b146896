package dsn

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/relay/delivery"
	"github.com/mailfleet/mailfleet/relay/spool"
)

var (
	arrival = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	now     = time.Date(2026, 3, 1, 12, 5, 0, 0, time.UTC)
)

const original = "From: Billing <billing@acme.example>\r\nTo: ben@example.org\r\nSubject: Your invoice\r\n" +
	"Message-ID: <inv-1@acme.example>\r\n\r\nThe body is not returned.\r\n"

func report() Report {
	headers, err := HeaderSection(strings.NewReader(original))
	if err != nil {
		panic(err)
	}
	return Report{
		ReportingMTA: "relay.mailfleet.test",
		QueueID:      "1426390015358_15_6484_8661.relay-0",
		Sender:       "billing@acme.example",
		ArrivalDate:  arrival,
		Headers:      headers,
		Recipients: []Recipient{
			{Address: "ben@example.org", Action: Failed, Status: "5.1.1", RemoteMTA: "mx.example.org",
				Code: 550, Text: "no such user\r\nX-Injected: yes", LastAttempt: now},
			{Address: "amy@nxdomain.example", Action: Failed, Status: "5.1.2",
				Text: "recipient domain nxdomain.example does not exist"},
		},
	}
}

// parsedPart is one MIME part of a parsed notification.
type parsedPart struct {
	mediaType string
	body      []byte
}

// parse reads a notification with net/mail and mime/multipart, as a Go
// mail client would.
func parse(t *testing.T, raw []byte) (*mail.Message, []parsedPart) {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("net/mail: %v", err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type %q: %v", msg.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var parts []parsedPart
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("multipart: %v", err)
		}
		body, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		pt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		parts = append(parts, parsedPart{mediaType: pt, body: body})
	}
	return msg, parts
}

// statusGroups reads a message/delivery-status body: the per-message group
// then one group per recipient (RFC 3464 §2.1).
func statusGroups(t *testing.T, body []byte) []textproto.MIMEHeader {
	t.Helper()
	var groups []textproto.MIMEHeader
	r := textproto.NewReader(bufio.NewReader(bytes.NewReader(body)))
	for {
		h, err := r.ReadMIMEHeader()
		if len(h) > 0 {
			groups = append(groups, h)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return groups
			}
			t.Fatalf("delivery-status: %v", err)
		}
	}
}

func TestBuildParsesWithGo(t *testing.T) {
	n, err := Build(report(), now)
	if err != nil {
		t.Fatal(err)
	}
	if n.From != "" || n.To != "billing@acme.example" {
		t.Fatalf("envelope %q -> %q", n.From, n.To)
	}
	msg, parts := parse(t, n.Body)
	if got := msg.Header.Get("Subject"); got != "Undelivered Mail Returned to Sender" {
		t.Fatalf("Subject %q", got)
	}
	if msg.Header.Get("Auto-Submitted") != "auto-replied" {
		t.Fatal("no Auto-Submitted header")
	}
	if from, err := mail.ParseAddress(msg.Header.Get("From")); err != nil || from.Address != "MAILER-DAEMON@relay.mailfleet.test" {
		t.Fatalf("From %v %v", from, err)
	}
	if len(parts) != 3 || parts[0].mediaType != "text/plain" || parts[1].mediaType != "message/delivery-status" || parts[2].mediaType != "text/rfc822-headers" {
		t.Fatalf("parts %+v", parts)
	}
	if !strings.Contains(string(parts[0].body), "<ben@example.org>: no such user") {
		t.Fatalf("human part:\n%s", parts[0].body)
	}
	groups := statusGroups(t, parts[1].body)
	if len(groups) != 3 {
		t.Fatalf("%d groups in\n%s", len(groups), parts[1].body)
	}
	if groups[0].Get("Reporting-MTA") != "dns; relay.mailfleet.test" || groups[0].Get("Arrival-Date") != "Sun, 01 Mar 2026 12:00:00 +0000" {
		t.Fatalf("per-message fields %v", groups[0])
	}
	want := []map[string]string{
		{"Final-Recipient": "rfc822; ben@example.org", "Action": "failed", "Status": "5.1.1",
			"Remote-MTA": "dns; mx.example.org", "Diagnostic-Code": "smtp; 550 5.1.1 no such userX-Injected: yes"},
		{"Final-Recipient": "rfc822; amy@nxdomain.example", "Action": "failed", "Status": "5.1.2",
			"Diagnostic-Code": "X-Mailfleet; recipient domain nxdomain.example does not exist"},
	}
	for i, w := range want {
		for k, v := range w {
			if got := groups[i+1].Get(k); got != v {
				t.Fatalf("recipient %d %s = %q, want %q", i, k, got, v)
			}
		}
	}
	if groups[2].Get("Remote-MTA") != "" {
		t.Fatal("Remote-MTA without a remote server")
	}
	if !bytes.Contains(parts[2].body, []byte("Subject: Your invoice\r\n")) || bytes.Contains(parts[2].body, []byte("The body")) {
		t.Fatalf("headers part:\n%s", parts[2].body)
	}
}

func TestBuildRefusesNullSender(t *testing.T) {
	for _, sender := range []string{"", "<>", " <> "} {
		r := report()
		r.Sender = sender
		if _, err := Build(r, now); !errors.Is(err, ErrNullSender) {
			t.Fatalf("sender %q: err %v, want ErrNullSender", sender, err)
		}
	}
	b := Builder("relay.test")
	_, err := b(spool.Envelope{ID: "q1", From: ""}, []delivery.Result{{Recipient: "a@example.org", Outcome: delivery.Failed, Enhanced: "5.1.1", Code: 550}},
		strings.NewReader(original), now)
	if !errors.Is(err, ErrNullSender) {
		t.Fatalf("Builder with the null sender: %v", err)
	}
}

func TestBuildRejectsBadInput(t *testing.T) {
	cases := map[string]func(*Report){
		"no recipients": func(r *Report) { r.Recipients = nil },
		"bad status":    func(r *Report) { r.Recipients[0].Status = "5.1" },
		"bad action":    func(r *Report) { r.Recipients[0].Action = "delivered" },
		"no MTA":        func(r *Report) { r.ReportingMTA = "" },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			r := report()
			mutate(&r)
			if _, err := Build(r, now); err == nil {
				t.Fatal("built")
			}
		})
	}
}

func TestDelayedNotification(t *testing.T) {
	r := report()
	r.Recipients = []Recipient{FromResult(delivery.Result{Recipient: "ben@example.org", Outcome: delivery.Deferred,
		Code: 451, Enhanced: "4.3.0", Text: "try later", RemoteMTA: "mx.example.org"}, now)}
	n, err := Build(r, now)
	if err != nil {
		t.Fatal(err)
	}
	msg, parts := parse(t, n.Body)
	if !strings.HasPrefix(msg.Header.Get("Subject"), "Delayed Mail") {
		t.Fatalf("Subject %q", msg.Header.Get("Subject"))
	}
	g := statusGroups(t, parts[1].body)
	if g[1].Get("Action") != "delayed" || g[1].Get("Status") != "4.3.0" {
		t.Fatalf("%v", g[1])
	}
}

func TestBuilderForDispatch(t *testing.T) {
	failed := []delivery.Result{
		{Recipient: "ben@example.org", Outcome: delivery.Failed, Code: 550, Enhanced: "5.1.1", Text: "no such user", RemoteMTA: "mx.example.org"},
		// Expired: the dispatcher passes delivery.Expire's result.
		delivery.Expire(delivery.Result{Recipient: "amy@example.org", Outcome: delivery.Deferred, Code: 451, Enhanced: "4.3.0", Text: "try later"}, 120*time.Hour),
		// A result with no usable code still reports a failure class.
		{Recipient: "cy@example.org", Outcome: delivery.Failed, Text: "odd"},
	}
	env := spool.Envelope{ID: "q1", From: "billing@acme.example", ReceivedAt: arrival}
	raw, err := Builder("relay.test")(env, failed, strings.NewReader(original), now)
	if err != nil {
		t.Fatal(err)
	}
	_, parts := parse(t, raw)
	g := statusGroups(t, parts[1].body)
	if len(g) != 4 || g[2].Get("Status") != "5.4.7" || g[3].Get("Status") != "5.0.0" ||
		!strings.HasPrefix(g[2].Get("Diagnostic-Code"), "smtp; 451 delivery time expired") {
		t.Fatalf("groups %v", g)
	}
}

func TestHeaderSection(t *testing.T) {
	long := strings.Repeat("x", 10000)
	cases := []struct{ in, want string }{
		{"A: 1\r\nB: 2\r\n\r\nbody", "A: 1\r\nB: 2\r\n"},
		{"A: 1\nB: 2\n\nbody", "A: 1\nB: 2\n"},
		{"A: 1", "A: 1\r\n"},
		{"A: " + long + "\r\n\r\n", "A: " + long + "\r\n"},
		{"", ""},
	}
	for _, tc := range cases {
		got, err := HeaderSection(strings.NewReader(tc.in))
		if err != nil || string(got) != tc.want {
			t.Fatalf("HeaderSection(%.40q) = %.40q, %v", tc.in, got, err)
		}
	}
	huge := strings.Repeat("A: "+long+"\r\n", 100)
	got, err := HeaderSection(strings.NewReader(huge))
	if err != nil || len(got) > maxHeaderSection || len(got) == 0 {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
}

// TestPythonEmailParsesDSN checks that Python's email package, as mail
// clients and bounce processors written in Python read mail, finds the
// message/delivery-status part and its fields.
func TestPythonEmailParsesDSN(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is not installed: run `make test-deps` (hack/install-test-deps.sh)")
	}
	n, err := Build(report(), now)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dsn.eml")
	if err := os.WriteFile(file, n.Body, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(python, "testdata/parse_dsn.py", file).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	want := "report-type=delivery-status\n" +
		"reporting-mta=dns; relay.mailfleet.test\n" +
		"recipient=rfc822; ben@example.org|failed|5.1.1|dns; mx.example.org\n" +
		"recipient=rfc822; amy@nxdomain.example|failed|5.1.2|\n" +
		"headers-subject=Your invoice\n"
	if string(out) != want {
		t.Fatalf("python saw\n%s\nwant\n%s", out, want)
	}
}
