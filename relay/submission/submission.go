// Package submission is the relay's policy for mail submission, the
// Backend behind relay/smtpd's protocol engine: who may log in and how
// often an address may fail, which senders an account may use in the
// envelope and the From header, how many recipients a message may have,
// what it costs of the account's budget, and the durable spool a message
// must reach before the engine acknowledges it.
//
// It holds no socket: its tests drive a Session directly.
package submission

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/mailfleet/mailfleet/relay/budget"
	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/queueid"
	"github.com/mailfleet/mailfleet/relay/smtpd"
	"github.com/mailfleet/mailfleet/relay/spool"
	"github.com/mailfleet/mailfleet/relay/suppression"
)

// Authenticator verifies a username (api_user or api_user#label_id) and key.
type Authenticator interface {
	Authenticate(username, key string) (credentials.Identity, error)
}

// Config is the policy's own tuning. Zero values take the defaults that
// Defaults documents.
type Config struct {
	// AuthFailureLimit failed logins from one IP within AuthFailureWindow
	// shut that IP out until the window passes.
	AuthFailureLimit  int
	AuthFailureWindow time.Duration
	// DropSuppressed accepts a suppressed recipient and sends it nothing,
	// instead of refusing its RCPT with 550 5.1.1 (relay config
	// suppression.onSubmission: Drop).
	DropSuppressed bool
}

// Defaults fills unset fields: 10 failures in 10 minutes.
func (c *Config) Defaults() {
	if c.AuthFailureLimit == 0 {
		c.AuthFailureLimit = 10
	}
	if c.AuthFailureWindow == 0 {
		c.AuthFailureWindow = 10 * time.Minute
	}
}

// Deps are the policy's collaborators.
type Deps struct {
	Auth    Authenticator
	Budget  budget.Budget
	Spool   spool.Spool
	IDs     *queueid.Generator
	Metrics *Metrics
	// Events hears of each message queued (events.Producer); optional.
	Events Events
	// Suppressions refuses the recipients an account's mail bounced from
	// for good (suppression.Guard); optional.
	Suppressions Suppressions
}

// Suppressions says whether an account's recipient is suppressed.
type Suppressions interface {
	Suppressed(ctx context.Context, apiUser, recipient string) (suppression.Entry, bool)
}

// Events is told of each message whose queue write was acknowledged, right
// after the acknowledgement. Queued must not wait: the client's 250 does
// not wait for it.
type Events interface {
	Queued(env spool.Envelope)
	// Suppressed reports a recipient refused because it is suppressed.
	Suppressed(apiUser, labelID, recipient string)
}

// Backend is the relay's smtpd.Backend. Its failure throttle is shared by
// every session, so that an address's failures count across them.
type Backend struct {
	cfg      Config
	deps     Deps
	throttle *loginThrottle
}

var _ smtpd.Backend = (*Backend)(nil)

// New checks the collaborators and returns the relay's Backend.
func New(cfg Config, deps Deps) (*Backend, error) {
	cfg.Defaults()
	if deps.Auth == nil || deps.Budget == nil || deps.Spool == nil || deps.IDs == nil || deps.Metrics == nil {
		return nil, errors.New("submission: Auth, Budget, Spool, IDs and Metrics are required")
	}
	return &Backend{cfg: cfg, deps: deps, throttle: newLoginThrottle(cfg.AuthFailureLimit, cfg.AuthFailureWindow)}, nil
}

// NewSession implements smtpd.Backend; it never refuses a session.
func (b *Backend) NewSession(c *smtpd.ConnInfo) (smtpd.Session, error) {
	log := c.Log
	if log == nil {
		log = slog.Default()
	}
	return &session{b: b, conn: c, log: log}, nil
}
