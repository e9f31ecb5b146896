package credentials

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"

	"github.com/mailfleet/mailfleet/api/wire"
)

// accountOpt changes one aspect of a test account, so each test shows only
// the fields that matter to it.
type accountOpt func(*Account)

// account builds an Account for apiUser with the given options applied.
func account(apiUser string, opts ...accountOpt) Account {
	a := Account{APIUser: apiUser}
	for _, opt := range opts {
		opt(&a)
	}
	return a
}

// withKeys adds the digests of keys to the account's valid keys.
func withKeys(keys ...string) accountOpt {
	return func(a *Account) {
		for _, k := range keys {
			a.KeyDigests = append(a.KeyDigests, wire.Digest(k))
		}
	}
}

// withBudget sets the account's budget per minute.
func withBudget(n int) accountOpt {
	return func(a *Account) { a.BudgetPerMinute = n }
}

// withDomains sets the account's allowed sender domains.
func withDomains(domains ...string) accountOpt {
	return func(a *Account) { a.AllowedSenderDomains = domains }
}

// withLabel adds an active label.
func withLabel(id string) accountOpt {
	return func(a *Account) { a.Labels = append(a.Labels, Label{ID: id}) }
}

// withSuspendedLabel adds a suspended label.
func withSuspendedLabel(id string) accountOpt {
	return func(a *Account) { a.Labels = append(a.Labels, Label{ID: id, Suspended: true}) }
}

// suspended suspends the account.
func suspended() accountOpt {
	return func(a *Account) { a.Suspended = true }
}

// mapSource is a Source over a fixed set of accounts.
type mapSource map[string]*Account

func newMapSource(accounts ...Account) mapSource {
	m := make(mapSource, len(accounts))
	for i := range accounts {
		m[accounts[i].APIUser] = &accounts[i]
	}
	return m
}

func (m mapSource) Lookup(apiUser string) (*Account, bool) {
	a, ok := m[apiUser]
	return a, ok
}

// newTestKey returns a fresh key, failing the test if none can be made.
func newTestKey(t testing.TB) string {
	t.Helper()
	k, err := wire.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// logRecorder is a slog.Handler that keeps the messages it is given, so
// tests can wait for a log line instead of sleeping.
type logRecorder struct {
	mu       sync.Mutex
	messages []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.messages = append(r.messages, rec.Message)
	return nil
}

func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

// count returns how many times msg has been logged.
func (r *logRecorder) count(msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.messages {
		if m == msg {
			n++
		}
	}
	return n
}

// snapshotMessages returns a copy of every message logged so far.
func (r *logRecorder) snapshotMessages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.messages)
}
