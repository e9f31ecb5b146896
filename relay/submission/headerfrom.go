package submission

import (
	"bytes"
	"io"
	"net/mail"

	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/smtpd"
)

// maxHeaderCapture bounds the header section kept for the From check; a
// From header past it is not seen, and the message is refused as having
// none.
const maxHeaderCapture = 64 << 10

// headerCapture passes a message body through to w and keeps its header
// section, up to maxHeaderCapture bytes.
type headerCapture struct {
	w    io.Writer
	buf  []byte
	done bool
}

func (h *headerCapture) Write(p []byte) (int, error) {
	if !h.done {
		h.buf = append(h.buf, p[:min(len(p), maxHeaderCapture-len(h.buf))]...)
		if i := bytes.Index(h.buf, []byte("\r\n\r\n")); i >= 0 {
			h.buf, h.done = h.buf[:i+2], true
		} else if len(h.buf) >= maxHeaderCapture {
			h.done = true
		}
	}
	return h.w.Write(p)
}

// bytes is the header section as captured, ending in CRLF.
func (h *headerCapture) bytes() []byte { return h.buf }

// headerFromAllowed applies the account's sender policy to the message's
// From header: every address of every From field must be in an allowed
// domain, so an account allowed acme.example cannot show recipients
// ceo@bank.example with an allowed envelope. It decides on the domains
// net/mail parsed (RFC 5322, encoded words and groups included), as the
// SMTP grammar reads them. nil means allowed.
func headerFromAllowed(id *credentials.Identity, header []byte) *smtpd.Error {
	if !id.CheckHeaderFrom || id.Unrestricted() {
		return nil
	}
	msg, err := mail.ReadMessage(bytes.NewReader(append(header[:len(header):len(header)], '\r', '\n')))
	if err != nil || len(msg.Header["From"]) == 0 {
		return &smtpd.Error{Reply: smtpd.ReplyFromMissing}
	}
	for _, field := range msg.Header["From"] {
		addrs, err := mail.ParseAddressList(field)
		if err != nil || len(addrs) == 0 {
			return &smtpd.Error{Reply: smtpd.ReplyFromMissing}
		}
		for _, a := range addrs {
			mb, ok := smtpd.ParseMailbox(a.Address)
			if !ok || !id.SenderDomainAllowed(mb.Domain) {
				return &smtpd.Error{Reply: smtpd.ReplyFromNotAllowed.With(smtpd.PrintableAddress(a.Address))}
			}
		}
	}
	return nil
}

// headerFromDomain is the domain of the first address of head's From,
// the domain a DKIM signature aligns with (DMARC); "" when there is none.
func headerFromDomain(head []byte) string {
	msg, err := mail.ReadMessage(bytes.NewReader(append(head[:len(head):len(head)], '\r', '\n')))
	if err != nil {
		return ""
	}
	addrs, err := mail.ParseAddressList(msg.Header.Get("From"))
	if err != nil || len(addrs) == 0 {
		return ""
	}
	mb, ok := smtpd.ParseMailbox(addrs[0].Address)
	if !ok {
		return ""
	}
	return mb.Domain
}
