package submission

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailfleet/mailfleet/relay/budget"
	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/queueid"
	"github.com/mailfleet/mailfleet/relay/smtpd"
	"github.com/mailfleet/mailfleet/relay/spool"
	"github.com/mailfleet/mailfleet/relay/suppression"
)

// The policy is driven here as the engine drives it, without a socket: a
// Backend over test doubles, and its sessions called directly.

// accounts authenticates the key "right" for the identities it holds, by
// username.
type accounts map[string]credentials.Identity

func (a accounts) Authenticate(username, key string) (credentials.Identity, error) {
	id, ok := a[username]
	if !ok || key != "right" {
		return credentials.Identity{}, credentials.ErrInvalid
	}
	return id, nil
}

var testAccounts = accounts{
	"open":       {APIUser: "open", MaxRecipients: 2, BudgetPerMinute: 10},
	"restricted": {APIUser: "restricted", LabelID: "7", MaxRecipients: 2, BudgetPerMinute: 10, AllowedSenderDomains: []string{"ifaxin.com"}, CheckHeaderFrom: true},
	"labelled":   {APIUser: "labelled", MaxRecipients: 3, BudgetPerMinute: 100, ActiveLabels: []string{"1001", "1002"}},
	"labelled#1001": {APIUser: "labelled", LabelID: "1001", MaxRecipients: 3, BudgetPerMinute: 100,
		ActiveLabels: []string{"1001", "1002"}},
}

// budgetFunc answers every request with its decision.
type budgetFunc func(budget.Request) budget.Decision

func (f budgetFunc) Take(_ context.Context, r budget.Request) budget.Decision { return f(r) }

// recordingSpool keeps every message begun; its errors make it fail.
type recordingSpool struct {
	beginErr, writeErr, commitErr error
	// commitErrAfter lets that many commits succeed before commitErr.
	commitErrAfter int
	commits        int
	begun          []*recorded
}

type recorded struct {
	s                  *recordingSpool
	env                spool.Envelope
	body               bytes.Buffer
	committed, aborted bool
}

func (s *recordingSpool) Begin(_ context.Context, env spool.Envelope) (spool.Writer, error) {
	if s.beginErr != nil {
		return nil, s.beginErr
	}
	m := &recorded{s: s, env: env}
	s.begun = append(s.begun, m)
	return m, nil
}

func (m *recorded) Write(p []byte) (int, error) {
	if m.s.writeErr != nil {
		return 0, m.s.writeErr
	}
	return m.body.Write(p)
}

func (m *recorded) Commit(context.Context) error {
	if m.s.commitErr != nil && m.s.commits >= m.s.commitErrAfter {
		return m.s.commitErr
	}
	m.s.commits++
	m.committed = true
	return nil
}

func (m *recorded) Prepend(fields string) { m.env.Prepend += fields }

func (m *recorded) Abort() error {
	m.aborted = !m.committed
	return nil
}

type policy struct {
	backend *Backend
	spool   *recordingSpool
	metrics *Metrics
	budget  budget.Decision
	events  queuedEvents
}

// queuedEvents records the messages Events.Queued heard of, and whether
// each was committed by then.
type queuedEvents struct {
	spool      *recordingSpool
	reported   []bool
	suppressed []string // account/recipient
}

func (e *queuedEvents) Suppressed(apiUser, _, recipient string) {
	e.suppressed = append(e.suppressed, apiUser+"/"+recipient)
}

func (e *queuedEvents) Queued(env spool.Envelope) {
	i := slices.IndexFunc(e.spool.begun, func(m *recorded) bool { return m.env.ID == env.ID })
	e.reported = append(e.reported, i >= 0 && e.spool.begun[i].committed)
}

func newPolicy(t *testing.T, failureLimit int) *policy {
	t.Helper()
	ids, err := queueid.New("test-node")
	if err != nil {
		t.Fatal(err)
	}
	p := &policy{spool: &recordingSpool{}, metrics: NewMetrics(prometheus.NewRegistry()), budget: budget.Allow}
	p.events.spool = p.spool
	p.backend, err = New(Config{AuthFailureLimit: failureLimit}, Deps{
		Auth:    testAccounts,
		Budget:  budgetFunc(func(budget.Request) budget.Decision { return p.budget }),
		Spool:   p.spool,
		IDs:     ids,
		Metrics: p.metrics,
		Events:  &p.events,
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// session starts a session from ip, logged in as user unless user is "".
func (p *policy) session(t *testing.T, ip, user string) smtpd.Session {
	t.Helper()
	s, err := p.backend.NewSession(&smtpd.ConnInfo{Listener: "test", Hostname: "mx.test", TLS: true, Helo: "client.test",
		Remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		if err := s.Auth("PLAIN", user, "right"); err != nil {
			t.Fatalf("login as %s: %v", user, err)
		}
	}
	return s
}

func (p *policy) rejected(user, label, reason string) float64 {
	return testutil.ToFloat64(p.metrics.messages.WithLabelValues(user, label, "rejected", reason))
}

// reply is what the engine would answer for err: its reply, or "" for nil.
func reply(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	refusal, ok := errors.AsType[*smtpd.Error](err)
	if !ok {
		t.Fatalf("%v carries no reply", err)
	}
	return refusal.Reply.String()
}

func TestAuthThrottlesAnAddress(t *testing.T) {
	p := newPolicy(t, 2)
	const throttled = "421 4.7.0 mx.test Too many authentication failures, try again later"
	guesser := p.session(t, "192.0.2.1", "")
	for range 2 {
		if got := reply(t, guesser.AuthStart("PLAIN")); got != "" {
			t.Fatalf("AuthStart within the limit: %q", got)
		}
		if got := reply(t, guesser.Auth("PLAIN", "open", "wrong")); got != "535 5.7.8 Authentication credentials invalid" {
			t.Fatalf("wrong key: %q", got)
		}
	}
	if got := reply(t, guesser.Auth("PLAIN", "open", "right")); got != throttled {
		t.Fatalf("right key over the limit: %q, want %q", got, throttled)
	}
	if got := reply(t, p.session(t, "192.0.2.1", "").Auth("PLAIN", "open#label", "right")); got != throttled {
		t.Fatalf("another session of the address as the same api_user: %q, want %q", got, throttled)
	}
	p.session(t, "192.0.2.2", "open") // another address logs in
	// The address as another api_user (a neighbour behind the same NAT)
	// is not shut out; only guessing across ten times the limit's worth
	// of api_users shuts the whole address out, before any key is sent.
	for i := range addressShare - 1 {
		s := p.session(t, "192.0.2.1", "")
		for range 2 {
			if got := reply(t, s.Auth("PLAIN", fmt.Sprintf("user%d", i), "wrong")); got != "535 5.7.8 Authentication credentials invalid" {
				t.Fatalf("a guess at user%d: %q", i, got)
			}
		}
	}
	if got := reply(t, p.session(t, "192.0.2.1", "").AuthStart("LOGIN")); got != throttled {
		t.Fatalf("the address after guessing across api_users, before any key: %q, want %q", got, throttled)
	}
}

// A verifier that fails (not ErrInvalid) checked no key: the error has no
// reply, and the attempt costs the address nothing.
func TestAuthVerifierFailureCostsNothing(t *testing.T) {
	p := newPolicy(t, 1)
	p.backend.deps.Auth = failingAuth{}
	s := p.session(t, "192.0.2.1", "")
	for range 3 {
		err := s.Auth("PLAIN", "open", "right")
		if _, ok := errors.AsType[*smtpd.Error](err); ok || err == nil {
			t.Fatalf("verifier failure: %v, want an error without a reply", err)
		}
	}
	if err := s.AuthStart("PLAIN"); err != nil {
		t.Fatalf("address throttled by failures of the verifier: %v", err)
	}
}

type failingAuth struct{}

func (failingAuth) Authenticate(string, string) (credentials.Identity, error) {
	return credentials.Identity{}, errors.New("source not loaded")
}

func TestSenderPolicy(t *testing.T) {
	p := newPolicy(t, 0)
	tests := []struct{ user, from, want string }{
		{"restricted", "x@evil.example", "553 5.7.1 Sender address <x@evil.example> not allowed for this account"},
		{"restricted", `"ceo@ifaxin.com,"@bank.example`, `553 5.7.1 Sender address <"ceo@ifaxin.com,"@bank.example> not allowed for this account`},
		{"restricted", "", "553 5.7.1 Sender address <> not allowed for this account"},
		{"restricted", "support@IFAXIN.com", ""},
		{"open", "", ""},
		{"open", "ceo@bank.example", ""},
	}
	for _, tt := range tests {
		if got := reply(t, p.session(t, "192.0.2.1", tt.user).Mail(tt.from, smtpd.MailOptions{})); got != tt.want {
			t.Errorf("%s: MAIL FROM:<%s>: %q, want %q", tt.user, tt.from, got, tt.want)
		}
	}
	if n := p.rejected("restricted", "7", ReasonSenderNotAllowed); n != 3 {
		t.Fatalf("senders counted as rejected: %v, want 3", n)
	}
}

func TestRecipientCapOfTheAccount(t *testing.T) {
	s := newPolicy(t, 0).session(t, "192.0.2.1", "open")
	for range 2 {
		s.Mail("a@ifaxin.com", smtpd.MailOptions{})
		for _, want := range []string{"", "", "452 4.5.3 Too many recipients"} {
			if got := reply(t, s.Rcpt("r@example.com")); got != want {
				t.Fatalf("RCPT: %q, want %q", got, want)
			}
		}
		s.Reset() // a new transaction starts from no recipients
	}
}

// TestDataOutcomes: a message is committed only when every check passes;
// any other outcome aborts it and counts it under its reason, with the
// reply the contract gives.
func TestDataOutcomes(t *testing.T) {
	const body = "From: orders@ifaxin.com\r\nSubject: x\r\n\r\nhello\r\n"
	tooBig := &smtpd.Error{Reply: smtpd.ReplyTooBig, Err: smtpd.ErrMessageTooBig}
	tooLong := &smtpd.Error{Reply: smtpd.ReplyDataLineLong.With(8), Err: smtpd.ErrMessageLineTooLong}
	tests := []struct {
		name   string
		setup  func(*policy)
		body   io.Reader
		want   string // reply; "" for queued
		reason string
	}{
		{"queued", nil, strings.NewReader(body), "", ""},
		{"From header not allowed", nil, strings.NewReader("From: ceo@bank.example\r\n\r\nx\r\n"),
			"550 5.7.1 From header address <ceo@bank.example> not allowed for this account", ReasonSenderNotAllowed},
		{"over budget", func(p *policy) { p.budget = budget.OverLimit }, strings.NewReader(body), "536 5.7.1 Frequency limited", ReasonOverBudget},
		{"budget unavailable", func(p *policy) { p.budget = budget.Unavailable }, strings.NewReader(body),
			"451 4.7.1 Frequency limit unavailable, try again later", ReasonBudgetDown},
		{"spool write fails", func(p *policy) { p.spool.writeErr = errors.New("disk full") }, strings.NewReader(body),
			"451 4.3.0 Queue unavailable, try again later", ReasonQueueDown},
		{"spool commit fails", func(p *policy) { p.spool.commitErr = errors.New("no quorum") }, strings.NewReader(body),
			"451 4.3.0 Queue unavailable, try again later", ReasonQueueDown},
		{"too big for the engine", nil, io.MultiReader(strings.NewReader(body), iotest.ErrReader(tooBig)),
			"552 5.3.4 Message size exceeds fixed limit", ReasonTooBig},
		{"line too long for the engine", nil, io.MultiReader(strings.NewReader(body), iotest.ErrReader(tooLong)),
			"500 5.5.2 Message line too long (limit 8 bytes)", ReasonLineTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPolicy(t, 0)
			if tt.setup != nil {
				tt.setup(p)
			}
			id, err := sendOne(t, p.session(t, "192.0.2.1", "restricted"), tt.body)
			if got := reply(t, err); got != tt.want {
				t.Fatalf("Data: %q, want %q", got, tt.want)
			}
			m := p.spool.begun[0]
			if queued := tt.want == ""; m.committed != queued || m.aborted == queued || (id == m.env.ID) != queued {
				t.Fatalf("committed %v, aborted %v, id %q of %q; want queued: %v", m.committed, m.aborted, id, m.env.ID, queued)
			}
			// Only a committed message is reported, once, after its commit.
			if queued := tt.want == ""; !slices.Equal(p.events.reported, map[bool][]bool{true: {true}, false: nil}[queued]) {
				t.Fatalf("queued events %v, want one after the commit only when queued", p.events.reported)
			}
			if tt.reason != "" && p.rejected("restricted", "7", tt.reason) != 1 {
				t.Fatalf("not counted as %s", tt.reason)
			}
		})
	}
}

// sendOne runs a transaction to b@example.com with body.
func sendOne(t *testing.T, s smtpd.Session, body io.Reader) (string, error) {
	t.Helper()
	if err := s.Mail("orders@ifaxin.com", smtpd.MailOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Rcpt("b@example.com"); err != nil {
		t.Fatal(err)
	}
	return s.Data(context.Background(), body)
}

func TestDataStoresTheEnvelope(t *testing.T) {
	p := newPolicy(t, 0)
	if _, err := sendOne(t, p.session(t, "192.0.2.1", "restricted"), strings.NewReader("From: a@ifaxin.com\r\n\r\nhi\r\n")); err != nil {
		t.Fatal(err)
	}
	m := p.spool.begun[0]
	env := m.env
	if env.APIUser != "restricted" || env.LabelID != "7" || env.From != "orders@ifaxin.com" || len(env.To) != 1 ||
		env.Helo != "client.test" || !env.TLS || env.RemoteAddr != "192.0.2.1:40000" {
		t.Fatalf("envelope %+v", env)
	}
	if m.body.String() != "From: a@ifaxin.com\r\n\r\nhi\r\n" {
		t.Fatalf("stored body %q", m.body.String())
	}
	if got := testutil.ToFloat64(p.metrics.bytes.WithLabelValues("restricted", "7")); got != float64(m.body.Len()) {
		t.Fatalf("accepted bytes = %v", got)
	}
}

// When the spool cannot begin, the body is still read to its end, and what
// ended it decides: a connection lost meanwhile is "interrupted", with no
// reply, rather than a queue failure.
func TestDataWithoutSpool(t *testing.T) {
	p := newPolicy(t, 0)
	p.spool.beginErr = errors.New("stream unavailable")
	body := strings.NewReader("From: a@ifaxin.com\r\n\r\nhi\r\n")
	if got := reply(t, second(sendOne(t, p.session(t, "192.0.2.1", "restricted"), body))); got != "451 4.3.0 Queue unavailable, try again later" {
		t.Fatalf("spool unavailable: %q", got)
	}
	if body.Len() != 0 {
		t.Fatalf("%d bytes of the body left unread", body.Len())
	}
	lost := io.MultiReader(strings.NewReader("From: a@ifaxin.com\r\n"), iotest.ErrReader(io.ErrUnexpectedEOF))
	err := second(sendOne(t, p.session(t, "192.0.2.1", "restricted"), lost))
	if _, ok := errors.AsType[*smtpd.Error](err); ok || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("connection lost: %v, want the read error and no reply", err)
	}
	if p.rejected("restricted", "7", ReasonQueueDown) != 1 || p.rejected("restricted", "7", ReasonInterrupted) != 1 {
		t.Fatal("want one queue_unavailable and one interrupted")
	}
}

func second[T any](_ T, err error) error { return err }

// suppressedSet suppresses the listed account/recipient pairs.
type suppressedSet map[string]bool

func (s suppressedSet) Suppressed(_ context.Context, apiUser, recipient string) (suppression.Entry, bool) {
	return suppression.Entry{Recipient: recipient, Reason: suppression.ReasonBounce}, s[apiUser+"/"+recipient]
}

// TestSuppressedRecipientRefused: a recipient the account's mail bounced
// from for good is refused at RCPT with 550 5.1.1 and a suppressed event,
// and takes no place in the message: the others are queued, and spend
// the budget, as if it had never been named. Another account may still
// send to it.
func TestSuppressedRecipientRefused(t *testing.T) {
	p := newPolicy(t, 0)
	p.backend.deps.Suppressions = suppressedSet{"open/gone@example.com": true}
	s := p.session(t, "192.0.2.1", "open")
	s.Mail("a@ifaxin.com", smtpd.MailOptions{})
	if got := reply(t, s.Rcpt("gone@example.com")); got != "550 5.1.1 Recipient <gone@example.com> suppressed: earlier mail to it bounced" {
		t.Fatalf("RCPT of a suppressed recipient: %q", got)
	}
	if got := reply(t, s.Rcpt("ok@example.com")); got != "" {
		t.Fatalf("RCPT of another: %q", got)
	}
	if _, err := s.Data(context.Background(), strings.NewReader("From: a@ifaxin.com\r\n\r\nhi\r\n")); err != nil {
		t.Fatal(err)
	}
	if to := p.spool.begun[0].env.To; !slices.Equal(to, []string{"ok@example.com"}) {
		t.Fatalf("queued to %v", to)
	}
	if !slices.Equal(p.events.suppressed, []string{"open/gone@example.com"}) {
		t.Fatalf("suppressed events: %v", p.events.suppressed)
	}
	other := p.session(t, "192.0.2.2", "restricted")
	other.Mail("a@ifaxin.com", smtpd.MailOptions{})
	if got := reply(t, other.Rcpt("gone@example.com")); got != "" {
		t.Fatalf("another account's RCPT: %q", got)
	}
}

// TestSuppressedRecipientDropped: with suppression.onSubmission Drop, a
// suppressed recipient is accepted and sent nothing, with its event; a
// message all of whose recipients are suppressed gets its 250 and an id,
// and nothing is spooled or spent.
func TestSuppressedRecipientDropped(t *testing.T) {
	p := newPolicy(t, 0)
	p.backend.cfg.DropSuppressed = true
	p.backend.deps.Suppressions = suppressedSet{"open/gone@example.com": true}
	hits := 0
	p.backend.deps.Budget = budgetFunc(func(r budget.Request) budget.Decision { hits += r.Hits; return budget.Allow })
	s := p.session(t, "192.0.2.1", "open")
	s.Mail("a@ifaxin.com", smtpd.MailOptions{})
	for _, rcpt := range []string{"gone@example.com", "ok@example.com"} {
		if got := reply(t, s.Rcpt(rcpt)); got != "" {
			t.Fatalf("RCPT %s: %q", rcpt, got)
		}
	}
	if _, err := s.Data(context.Background(), strings.NewReader("From: a@ifaxin.com\r\n\r\nhi\r\n")); err != nil {
		t.Fatal(err)
	}
	if to := p.spool.begun[0].env.To; !slices.Equal(to, []string{"ok@example.com"}) || hits != 1 {
		t.Fatalf("queued to %v, %d budget units", to, hits)
	}
	s.Reset()
	s.Mail("a@ifaxin.com", smtpd.MailOptions{})
	s.Rcpt("gone@example.com")
	id, err := s.Data(context.Background(), strings.NewReader("From: a@ifaxin.com\r\n\r\nhi\r\n"))
	if err != nil || id == "" || len(p.spool.begun) != 1 || hits != 1 {
		t.Fatalf("all suppressed: id %q, err %v, %d spooled, %d budget units", id, err, len(p.spool.begun), hits)
	}
	if len(p.events.suppressed) != 2 {
		t.Fatalf("suppressed events: %v", p.events.suppressed)
	}
}
