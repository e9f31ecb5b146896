package smtpd

import (
	"fmt"
	"strconv"
)

// Reply is one SMTP reply: a code, an enhanced status code (RFC 3463; empty
// only where the protocol has none, as in 220, 334 and 354) and a text.
type Reply struct {
	Code     int
	Enhanced string
	Text     string
}

func (r Reply) String() string {
	if r.Enhanced == "" {
		return strconv.Itoa(r.Code) + " " + r.Text
	}
	return strconv.Itoa(r.Code) + " " + r.Enhanced + " " + r.Text
}

// With fills the reply's %s verbs, for replies that name an address, an id
// or the host.
func (r Reply) With(a ...any) Reply {
	r.Text = fmt.Sprintf(r.Text, a...)
	return r
}

// The wire contract: every reply the relay sends is here, the ones the
// engine decides and the ones a Backend (relay/submission) does, so the
// whole contract reads in one place and tests compare against the same
// values. Texts with %s are completed where they are sent.
var (
	// Session.
	ReplyGreeting      = Reply{220, "", "%s ESMTP %s ready"} // hostname, banner
	ReplyHelo          = Reply{250, "", "%s Hello %s"}       // hostname, client's name
	ReplyQuit          = Reply{221, "2.0.0", "%s closing connection"}
	ReplyOK            = Reply{250, "2.0.0", "OK"}
	ReplyVrfy          = Reply{252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"}
	ReplyExpn          = Reply{502, "5.5.1", "EXPN not supported"}
	ReplyHelp          = Reply{214, "2.0.0", "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT"}
	ReplyHeloFirst     = Reply{503, "5.5.1", "Send EHLO first"}
	ReplyHeloSyntax    = Reply{501, "5.5.4", "Syntax: EHLO hostname"}
	ReplyUnknown       = Reply{500, "5.5.2", "Command not recognized"}
	ReplyLineTooLong   = Reply{500, "5.5.2", "Line too long"}
	ReplyNoParams      = Reply{501, "5.5.4", "Syntax: no parameters allowed"}
	ReplyTooManyError  = Reply{421, "4.7.0", "%s Too many errors, closing connection"}
	ReplyTimeout       = Reply{421, "4.4.2", "%s Timeout exceeded, closing connection"}
	ReplyBusy          = Reply{421, "4.3.2", "%s Too many connections, try again later"}
	ReplyClientBusy    = Reply{421, "4.7.0", "%s Too many connections from your address, try again later"}
	ReplyClientTooFast = Reply{421, "4.7.0", "%s Too many connections from your address in the last minute, try again later"}
	ReplyShuttingDown  = Reply{421, "4.3.2", "%s Service shutting down, try again later"}
	// ReplyUnavailable answers a session the Backend would not start and
	// gave no reply for.
	ReplyUnavailable = Reply{421, "4.3.0", "%s Service not available, try again later"}

	// STARTTLS (RFC 3207).
	ReplyStartTLS       = Reply{220, "2.0.0", "Ready to start TLS"}
	ReplyTLSActive      = Reply{503, "5.5.1", "TLS already active"}
	ReplyTLSUnavailable = Reply{502, "5.5.1", "STARTTLS not available"}

	// AUTH (RFC 4954).
	ReplyAuthOK            = Reply{235, "2.7.0", "Authentication successful"}
	ReplyAuthFailed        = Reply{535, "5.7.8", "Authentication credentials invalid"}
	ReplyAuthRequired      = Reply{530, "5.7.0", "Authentication required"}
	ReplyAuthNeedsTLS      = Reply{530, "5.7.0", "Must issue a STARTTLS command first"}
	ReplyAuthAlready       = Reply{503, "5.5.1", "Already authenticated"}
	ReplyAuthMechanism     = Reply{504, "5.5.4", "Unrecognized authentication mechanism"}
	ReplyAuthSyntax        = Reply{501, "5.5.2", "Cannot decode response"}
	ReplyAuthCancelled     = Reply{501, "5.7.0", "Authentication cancelled"}
	ReplyAuthInTransaction = Reply{503, "5.5.1", "AUTH not allowed during a mail transaction"}
	ReplyAuthThrottled     = Reply{421, "4.7.0", "%s Too many authentication failures, try again later"}
	ReplyAuthChallenge     = Reply{334, "", "%s"}

	// MAIL and RCPT.
	ReplySenderOK         = Reply{250, "2.1.0", "sender <%s> OK"}
	ReplyRecipientOK      = Reply{250, "2.1.5", "recipient <%s> OK"}
	ReplyMailSyntax       = Reply{501, "5.5.4", "Syntax: MAIL FROM:<address>"}
	ReplyRcptSyntax       = Reply{501, "5.5.4", "Syntax: RCPT TO:<address>"}
	ReplyBadAddress       = Reply{501, "5.1.7", "Bad address syntax"}
	ReplyBadRecipient     = Reply{501, "5.1.3", "Bad recipient address syntax"}
	ReplyNestedMail       = Reply{503, "5.5.1", "Sender already specified"}
	ReplyNeedMail         = Reply{503, "5.5.1", "Need MAIL command first"}
	ReplyNeedRcpt         = Reply{503, "5.5.1", "Need RCPT command first"}
	ReplyParam            = Reply{555, "5.5.4", "Unsupported parameter %s"}
	ReplySenderNotAllowed = Reply{553, "5.7.1", "Sender address <%s> not allowed for this account"}
	ReplyFromNotAllowed   = Reply{550, "5.7.1", "From header address <%s> not allowed for this account"}
	ReplyFromMissing      = Reply{550, "5.6.0", "The message has no From header this account may use"}
	ReplyTooManyRcpts     = Reply{452, "4.5.3", "Too many recipients"}
	// ReplyRcptSuppressed: the account's mail to this address bounced for
	// good, and the relay sends it no more (relay/suppression).
	ReplyRcptSuppressed = Reply{550, "5.1.1", "Recipient <%s> suppressed: earlier mail to it bounced"}
	// ReplySMTPAPIInvalid: the message's X-SMTPAPI header cannot be
	// applied; the text says why.
	ReplySMTPAPIInvalid = Reply{550, "5.6.0", "%s"}
	// ReplyHeaderTooLarge: the header section is held in memory to find
	// X-SMTPAPI; no mail needs one this long.
	ReplyHeaderTooLarge = Reply{552, "5.3.4", "Message header section too large"}
	// ReplyFanOutTooBig: X-SMTPAPI's copies, one per address of "to",
	// would write more than the relay takes from one message.
	ReplyFanOutTooBig = Reply{552, "5.3.4", "Message times its X-SMTPAPI recipients is over %d bytes; send fewer at once"}

	// DATA.
	ReplyData         = Reply{354, "", "go ahead"}
	ReplyQueued       = Reply{250, "2.0.0", "#%s#Queued"}
	ReplyTooBig       = Reply{552, "5.3.4", "Message size exceeds fixed limit"}
	ReplyDataLineLong = Reply{500, "5.5.2", "Message line too long (limit %d bytes)"}
	ReplyFrequency    = Reply{536, "5.7.1", "Frequency limited"}
	ReplyBudgetDown   = Reply{451, "4.7.1", "Frequency limit unavailable, try again later"}
	ReplyQueueDown    = Reply{451, "4.3.0", "Queue unavailable, try again later"}
	// ReplyTryLater answers a Backend's failure that carries no reply of
	// its own: temporary, so that a fault never bounces mail.
	ReplyTryLater = Reply{451, "4.3.0", "Message not accepted, try again later"}
)
