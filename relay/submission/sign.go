package submission

import (
	"context"
	"time"

	"github.com/mailfleet/mailfleet/relay/signing"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// signed returns w, made to DKIM-sign what is written to it when the
// account has keys for the domain of head's From (its verified domains,
// signing.Keyring.For): the signature is computed as the message streams
// into the queue and stored with it at Commit, after every check has
// passed.
func (s *session) signed(w spool.Writer, head []byte) spool.Writer {
	if s.identity.DKIM.Len() == 0 {
		return w
	}
	keys := s.identity.DKIM.For(headerFromDomain(head))
	if len(keys) == 0 {
		return w
	}
	sig, err := signing.NewSigner(keys, time.Now())
	if err != nil {
		s.unsigned(err)
		return w
	}
	return &signedWriter{Writer: w, sig: sig, s: s}
}

// unsigned records a message that goes out without the signature it
// should have had. It is sent anyway: the client could not make it
// signable by sending it again, and an unsigned message still arrives
// where the domain's DMARC policy is not reject.
func (s *session) unsigned(err error) {
	s.b.deps.Metrics.signature(false)
	s.log.Warn("message sent without its DKIM signature", "account", s.identity.APIUser, "err", err)
}

// signedWriter is a spool.Writer that signs what passes through it.
type signedWriter struct {
	spool.Writer
	sig *signing.Signer
	s   *session
}

func (w *signedWriter) Write(p []byte) (int, error) {
	n, err := w.Writer.Write(p)
	w.sig.Write(p[:n])
	return n, err
}

// Commit puts the signature in the envelope, then commits.
func (w *signedWriter) Commit(ctx context.Context) error {
	fields, err := w.sig.Close()
	if err != nil {
		w.s.unsigned(err)
	} else {
		w.Writer.Prepend(fields)
		w.s.b.deps.Metrics.signature(true)
	}
	return w.Writer.Commit(ctx)
}

func (w *signedWriter) Abort() error {
	w.sig.Abort()
	return w.Writer.Abort()
}
