package dispatch

import (
	"context"
	"strings"
	"time"

	"github.com/mailfleet/mailfleet/relay/delivery"
	"github.com/mailfleet/mailfleet/relay/spool"
	"github.com/mailfleet/mailfleet/relay/suppression"
)

// Suppressions is the suppression list (suppression.Guard): a recipient
// on it is not sent to, and a hard bounce puts one there.
type Suppressions interface {
	Suppressed(ctx context.Context, apiUser, recipient string) (suppression.Entry, bool)
	Bounced(ctx context.Context, apiUser string, e suppression.Entry)
}

type noSuppressions struct{}

func (noSuppressions) Suppressed(context.Context, string, string) (suppression.Entry, bool) {
	return suppression.Entry{}, false
}
func (noSuppressions) Bounced(context.Context, string, suppression.Entry) {}

// withoutSuppressed takes the suppressed recipients out of env: a message
// queued before one of its addresses bounced (in another message) is not
// sent there. They are finished with a suppressed event, neither
// delivered nor bounced back to the sender.
func (d *Dispatcher) withoutSuppressed(ctx context.Context, env spool.Envelope) (spool.Envelope, []delivery.Result) {
	var held []delivery.Result
	kept := make([]string, 0, len(env.To))
	for _, rcpt := range env.To {
		if e, ok := d.deps.Suppressions.Suppressed(ctx, env.APIUser, rcpt); ok {
			held = append(held, suppressedResult(rcpt, e))
			continue
		}
		kept = append(kept, rcpt)
	}
	if len(held) > 0 {
		env.To = kept
	}
	return env, held
}

// suppressedResult is what a suppressed event reports of a recipient.
func suppressedResult(rcpt string, e suppression.Entry) delivery.Result {
	return delivery.Result{Recipient: rcpt, Outcome: delivery.Failed, Enhanced: "5.1.1",
		Text: "recipient suppressed since " + e.At.UTC().Format(time.RFC3339) + " (" + e.Reason + ")"}
}

// suppressHardBounces puts on the list the recipients a remote server
// refused for good as addresses. A failure decided here (no MX, a refused
// address literal, an expired message) says nothing of the mailbox, and a
// refusal of the content or of the sender (5.7.x: spam, policy) is not the
// recipient's: only a remote server's 5xx that says the mailbox is bad
// counts (hardBounce).
func (d *Dispatcher) suppressHardBounces(ctx context.Context, env spool.Envelope, failed []delivery.Result, now time.Time) {
	for _, r := range failed {
		if r.RemoteMTA == "" || !hardBounce(r.Code, r.Enhanced) {
			continue
		}
		d.deps.Suppressions.Bounced(ctx, env.APIUser, suppression.Entry{
			Recipient: r.Recipient, Reason: suppression.ReasonBounce, QueueID: env.ID,
			Reply: r.Text, DSNStatus: r.Enhanced, At: now.UTC(),
		})
	}
}

// hardBounce reports whether a 5xx reply says the address itself is bad:
// an addressing status (5.1.x: no such user, bad domain) or a disabled
// mailbox (5.2.1); without an enhanced status, 550, 551 and 553.
func hardBounce(code int, enhanced string) bool {
	switch {
	case code < 500 || code > 599:
		return false
	case enhanced != "":
		return strings.HasPrefix(enhanced, "5.1.") || enhanced == "5.2.1"
	}
	return code == 550 || code == 551 || code == 553
}
